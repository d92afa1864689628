package ipam_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/dataplane/ipam/ipamtest"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

// BenchmarkAssign measures the allocation rate of one node assigning
// addresses one after the other, and reports the cost of an allocation
// against a baseline from the same run: one GET of the pool, the cheapest
// round trip to the API server.
func BenchmarkAssign(b *testing.B) {
	srv := apitest.Get(b)
	ipamtest.InstallCRDs(b, srv.Config)
	c, err := ipam.NewClientForConfig(srv.Config)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pool := ipamtest.NewPool(b, srv.Config, "bench", "10.22.0.0/16", 24)

	const probes = 100
	start := time.Now()
	for range probes {
		if _, err := c.FindPool(ctx, pool.Name); err != nil {
			b.Fatal(err)
		}
	}
	roundTrip := time.Since(start) / probes

	b.ResetTimer()
	start = time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := c.Assign(ctx, pool, ipam.AssignArgs{Handle: fmt.Sprintf("bench-%d", i), Node: "bench-node"}); err != nil {
			b.Fatal(err)
		}
	}
	perAssign := time.Since(start) / time.Duration(b.N)
	b.StopTimer()
	b.ReportMetric(float64(time.Second)/float64(perAssign), "allocs/s")
	b.ReportMetric(float64(perAssign)/float64(roundTrip), "assign/roundtrip")
	for i := 0; i < b.N; i++ {
		if _, err := c.Release(ctx, fmt.Sprintf("bench-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}
