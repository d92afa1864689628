package cni

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam/ipamtest"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

// BenchmarkAdd200Pods measures the latency of ADD through libcni for 200
// pods added one after the other on one node, and reports its p50 and p99
// next to a baseline from the same run: the exec of the plugin's VERSION
// command, which costs the process start and nothing else. Run it with
// -benchtime=1x (scripts/bench/cni.sh does).
func BenchmarkAdd200Pods(b *testing.B) {
	const pods = 200
	const pool = "10.48.0.0/16"
	ipamtest.NewPool(b, apitest.Get(b).Config, "bench", pool, 24)
	node := newNode(b)
	list := node.confList(b, "1.1.0", pool, nil)
	baseline := percentile(versionExecLatencies(b, node, 50), 50)

	var p50, p99 time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sandboxes := make([]*testPod, pods)
		for j := range sandboxes {
			sandboxes[j] = newPod(b, fmt.Sprintf("bench-%d-%d", i, j))
		}
		b.StartTimer()
		latencies := make([]time.Duration, 0, pods)
		for _, p := range sandboxes {
			start := time.Now()
			if _, err := node.add(list, p); err != nil {
				b.Fatal(err)
			}
			latencies = append(latencies, time.Since(start))
		}
		b.StopTimer()
		p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
		for _, p := range sandboxes {
			if err := node.del(list, p); err != nil {
				b.Fatal(err)
			}
			p.remove(b)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(p50.Microseconds())/1000, "add-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "add-p99-ms")
	b.ReportMetric(float64(baseline.Microseconds())/1000, "exec-baseline-ms")
	b.ReportMetric(float64(p50)/float64(baseline), "p50/baseline")
	b.ReportMetric(float64(p99)/float64(baseline), "p99/baseline")
}

// versionExecLatencies times n runs of the plugin's VERSION command in the
// node's netns.
func versionExecLatencies(b *testing.B, node *testNode, n int) []time.Duration {
	b.Helper()
	out := make([]time.Duration, 0, n)
	for range n {
		cmd := exec.Command(filepath.Join(pluginDir, "nettrace-cni"))
		cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
		start := time.Now()
		if err := node.do(cmd.Run); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

// percentile is the p-th percentile of samples (nearest rank).
func percentile(samples []time.Duration, p int) time.Duration {
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}
