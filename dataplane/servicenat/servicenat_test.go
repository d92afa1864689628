package servicenat

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count returns how many log lines contain fragment.
func (l *logBuffer) count(fragment string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), fragment)
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline; it is not a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestNewValidates(t *testing.T) {
	client := fake.NewClientset()
	for _, tc := range []struct {
		name   string
		client kubernetes.Interface
		node   string
		opts   Options
	}{
		{"no client", nil, testNode, Options{}},
		{"no node name", client, "", Options{}},
		{"unknown backend", client, testNode, Options{Backend: "ebpf"}},
		{"mark of two bits", client, testNode, Options{MasqueradeMark: 0x4001}},
		{"IPv6 cluster CIDR", client, testNode, Options{ClusterCIDR: netip.MustParsePrefix("fd00::/64")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.client, tc.node, nil, tc.opts); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

// TestRun drives the informers with a fake clientset and checks that the
// node's nat table follows the API, with bursts of changes coalesced.
func TestRun(t *testing.T) {
	node := newNetNS(t)
	client := fake.NewClientset()
	var logs logBuffer
	p, err := New(client, testNode, testConfig.NodeIPs, Options{
		ClusterCIDR:     testConfig.ClusterCIDR,
		MinSyncInterval: 300 * time.Millisecond,
		NetNSPath:       node.Path(),
		Logger:          slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})

	nat := func() table { return saveTable(t, node, BackendNFT, "nat", false) }
	waitFor(t, "the first sync", func() bool { return logs.count("msg=synced") > 0 })
	if logs.count("backend=nft") == 0 {
		t.Error("an empty node did not default to nft")
	}

	api := client.CoreV1().Services("default")
	slices := client.DiscoveryV1().EndpointSlices("default")
	httpPort := []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}
	svcChain := ServiceChain("default/web:http", "tcp")
	first := EndpointChain("default/web:http", "tcp", "172.16.1.10:8080")
	second := EndpointChain("default/web:http", "tcp", "172.16.2.10:8080")

	if _, err := api.Create(ctx, makeService("default", "web", "10.96.10.1", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := makeSlice("default", "web", "web-1", httpPort, ready("172.16.1.10", testNode))
	if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the service's chains", func() bool { return nat().count(svcChain, "-j "+first) == 1 })

	slice.Endpoints = append(slice.Endpoints, ready("172.16.2.10", "k8s-w2"))
	if _, err := slices.Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new endpoint", func() bool { return nat().count(svcChain, "-j "+second) == 1 })

	if err := api.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted service's chains to go", func() bool {
		tab := nat()
		_, svc := tab[svcChain]
		_, sep := tab[first]
		return !svc && !sep && tab.count("KUBE-SERVICES", "default/web") == 0
	})

	// A burst of changes is applied by a few syncs, not one each.
	before := logs.count("msg=synced")
	const burst = 40
	for i := range burst {
		name := fmt.Sprintf("burst-%02d", i)
		if _, err := api.Create(ctx, makeService("default", name, fmt.Sprintf("10.96.99.%d", i+1), nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the burst", func() bool {
		return nat().count("KUBE-SERVICES", "default/burst-") == 0 &&
			saveTable(t, node, BackendNFT, "filter", false).count("KUBE-SERVICES", "default/burst-") == burst
	})
	if syncs := logs.count("msg=synced") - before; syncs >= burst/2 {
		t.Errorf("%d services created at once took %d syncs", burst, syncs)
	}
	if logs.count("has no ready endpoints") < burst {
		t.Error("services without endpoints were not logged")
	}
}
