package servicenat

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"testing"
)

// benchEndpoints is the endpoints per service of BenchmarkSync.
const benchEndpoints = 5

var (
	benchServices = flag.Int("bench-services", 10000,
		"services in BenchmarkSync (rule generation and the legacy backend)")
	benchNFTServices = flag.Int("bench-nft-services", 1000,
		"services in BenchmarkSync for the nft backend, whose iptables-nft-restore --noflush (1.8.9) grows much faster than linearly")
)

// BenchmarkSync measures the sync path: rule generation alone, then per
// backend a full sync (generation, jump checks, iptables-save,
// iptables-restore) and a partial sync after one service's endpoints
// changed, each in a throwaway network namespace, with 5 endpoints per
// service. scripts/bench/servicenat.sh runs it and prints the ratios.
func BenchmarkSync(b *testing.B) {
	snap := manyServices(*benchServices, benchEndpoints)
	b.Run(fmt.Sprintf("build/services=%d", *benchServices), func(b *testing.B) {
		var size int
		for b.Loop() {
			size = len(Build(snap, testConfig).Update(nil).Input)
		}
		b.ReportMetric(float64(size)/1e6, "MB-input")
	})
	for _, backend := range backends {
		n := *benchServices
		if backend == BackendNFT {
			n = *benchNFTServices
		}
		snap := manyServices(n, benchEndpoints)
		b.Run(fmt.Sprintf("%s/full/services=%d", backend, n), func(b *testing.B) {
			p := newSyncer(b, newNetNS(b), backend)
			for b.Loop() {
				p.programmed = nil
				if err := p.sync(context.Background(), snap); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%s/partial/services=%d", backend, n), func(b *testing.B) {
			// As from the informers: objects with resource versions, so
			// that the unchanged services' rules are reused.
			snap := withVersions(manyServices(n, benchEndpoints), "1")
			p := newSyncer(b, newNetNS(b), backend)
			if err := p.sync(context.Background(), snap); err != nil {
				b.Fatal(err)
			}
			// Move the first endpoint of the first service back and forth.
			slice := snap.EndpointSlices[0]
			addrs := slice.Endpoints[0].Addresses
			original := addrs[0]
			version := 1
			for b.Loop() {
				version++
				slice.ResourceVersion = strconv.Itoa(version)
				addrs[0] = original
				if version%2 == 0 {
					addrs[0] = "172.16.255.250"
				}
				if err := p.sync(context.Background(), snap); err != nil {
					b.Fatal(err)
				}
				if p.programmed == nil {
					b.Fatal("the sync did not record its state")
				}
			}
		})
	}
}
