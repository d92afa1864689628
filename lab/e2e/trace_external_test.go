//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/render"
)

// outsideAddr is the lab's outside world on the underlay: the nodes'
// default gateway, where `nettrace-lab exec external` runs.
const outsideAddr = "192.168.10.1"

// Seed §7: a client outside the cluster calls the node port of k8s-w2,
// whose pod (nodeport-dnat) runs on k8s-w1. k8s-w2 DNATs the request to
// the pod and masquerades it to its own tunnel address, sends it over IPIP
// to k8s-w1, which delivers it; the reply goes back through k8s-w2, which
// undoes both NATs, to the outside.
// traceFromOutside runs `kubectl nettrace ip/192.168.10.1 TARGET --live`
// while the outside world curls url: the trace follows the first
// connection after its agents armed, so curl goes on until it is done.
func traceFromOutside(t *testing.T, target, url string) trace.Path {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t),
		"ip/"+outsideAddr, target, "--live", "--timeout", "20s", "-o", "json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		case <-time.After(300 * time.Millisecond):
			_ = exec.Command(bin("nettrace-lab"), "exec", "external", "--", "curl", "-s", "-m", "2", url).Run()
		}
	}
	if err != nil {
		t.Fatalf("kubectl nettrace ip/%s %s --live: %v\n%s", outsideAddr, target, err, stderr.String())
	}
	var p trace.Path
	if err := json.Unmarshal(stdout.Bytes(), &p); err != nil {
		t.Fatalf("%v:\n%s", err, stdout.String())
	}
	var table strings.Builder
	_ = render.Render(&table, p, render.Table, render.Options{})
	t.Logf("kubectl nettrace ip/%s %s --live:\n%s", outsideAddr, target, table.String())
	return p
}

func TestTraceFromOutsideThroughANodeWithoutThePod(t *testing.T) {
	traceSetup(t)
	p := traceFromOutside(t, "node/k8s-w2:31010", "192.168.10.102:31010")
	outside, w2 := netip.MustParseAddr(outsideAddr), netip.MustParseAddr("192.168.10.102")
	if p.Flow.Src != outside || p.Flow.Dst != w2 || p.Flow.DstPort != 31010 || p.Flow.SrcPort == 0 {
		t.Fatalf("flow %s, want curl's from %s to 192.168.10.102:31010", p.Flow, outsideAddr)
	}
	if p.Verdict.Result != trace.Replied {
		t.Errorf("verdict %+v, want replied", p.Verdict)
	}
	pod := podIP(t, "nodeport-dnat")
	on := func(node string, match func(trace.Hop) bool) func(trace.Hop) bool {
		return func(h trace.Hop) bool { return h.Node == node && match(h) }
	}
	tunnel := func(kind trace.HopKind, dir trace.Direction) func(trace.Hop) bool {
		return func(h trace.Hop) bool {
			return h.Kind == kind && h.Direction == dir && h.Tunnel != nil && h.Tunnel.Type == "ipip"
		}
	}
	for what, match := range map[string]func(trace.Hop) bool{
		"KUBE-NODEPORTS on k8s-w2":         on("k8s-w2", ruleChain("KUBE-NODEPORTS")),
		"the service's KUBE-EXT on k8s-w2": on("k8s-w2", ruleChain("KUBE-EXT-")),
		"the DNAT rule of KUBE-SEP on k8s-w2": on("k8s-w2", func(h trace.Hop) bool {
			return ruleChain("KUBE-SEP-")(h) && strings.Contains(h.Rule.Text, "-j DNAT")
		}),
		"the DNAT to nodeport-dnat on k8s-w2": on("k8s-w2", dnatTo(pod)),
		"KUBE-POSTROUTING's MASQUERADE on k8s-w2": on("k8s-w2", func(h trace.Hop) bool {
			return ruleChain("KUBE-POSTROUTING")(h) && strings.Contains(h.Rule.Text, "MASQUERADE")
		}),
		"the SNAT of the outside address on k8s-w2": on("k8s-w2", func(h trace.Hop) bool {
			return h.NAT != nil && h.NAT.Type == "SNAT" && h.NAT.From.Addr() == outside
		}),
		"the request unwrapped from IPIP on k8s-w1": on("k8s-w1", tunnel(trace.HopDecap, trace.Request)),
		"the delivery to nodeport-dnat on k8s-w1":   on("k8s-w1", deliveredTo("nodeport-dnat")),
		// k8s-w1 sees the request only with the source k8s-w2 gave it.
		"the route lookup of the request on k8s-w1, to the pod's veth": on("k8s-w1", routeOf(trace.Request, "cali")),
		"the route lookup of the reply on k8s-w1, into the tunnel":     on("k8s-w1", routeOf(trace.Reply, "tunl0")),
		"the reply wrapped in IPIP on k8s-w1":                          on("k8s-w1", tunnel(trace.HopEncap, trace.Reply)),
		"the reply leaving k8s-w2 to the outside, un-NATed": on("k8s-w2", func(h trace.Hop) bool {
			p := h.Packet
			return h.Direction == trace.Reply && h.Kind == trace.HopInterface && p != nil &&
				p.Src == w2 && p.SrcPort == 31010 && p.Dst == outside
		}),
	} {
		if !hasHop(&p, match) {
			t.Errorf("the path misses %s", what)
		}
	}
}

// routeOf matches the route lookup of a direction whose device starts with dev.
func routeOf(dir trace.Direction, dev string) func(trace.Hop) bool {
	return func(h trace.Hop) bool {
		return h.Kind == trace.HopRoute && h.Direction == dir && h.Route != nil && strings.HasPrefix(h.Route.Dev, dev)
	}
}

// Seed §7: the load balancer's address is answered by one node, where the
// trace enters: its rule for the address, the DNAT to one of nginx-test's
// pods, and the reply back to the outside from the address.
func TestTraceFromOutsideToTheLoadBalancer(t *testing.T) {
	traceSetup(t)
	checkLoadBalancerFromOutside(t)
	lb := serviceLoadBalancerIP(t, "nginx-lb")
	p := traceFromOutside(t, lb+":80", lb)
	if p.Verdict.Result != trace.Replied || len(p.Hops) == 0 {
		t.Fatalf("verdict %+v, want replied", p.Verdict)
	}
	entry := p.Hops[0].Node
	for what, match := range map[string]func(trace.Hop) bool{
		"the rule of the load balancer's address": func(h trace.Hop) bool {
			return h.Node == entry && h.Rule != nil && strings.Contains(h.Rule.Text, "default/nginx-lb loadbalancer IP")
		},
		"the DNAT to a nginx-test pod":     dnatTo(endpointIPs(t, "nginx-lb")...),
		"the delivery to a nginx-test pod": deliveredTo("nginx-test-"),
		"the reply from the address to the outside": func(h trace.Hop) bool {
			return h.Node == entry && h.Direction == trace.Reply && h.Packet != nil &&
				h.Packet.Src.String() == lb && h.Packet.Dst.String() == outsideAddr
		},
	} {
		if !hasHop(&p, match) {
			t.Errorf("the path misses %s", what)
		}
	}
}

// serviceLoadBalancerIP is the load balancer address of a service.
func serviceLoadBalancerIP(t *testing.T, name string) string {
	t.Helper()
	s, err := clientset(t).CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
		t.Fatalf("service %s has no load balancer address: %v", name, err)
	}
	return s.Status.LoadBalancer.Ingress[0].IP
}

func TestTraceFromOutsideNeedsLive(t *testing.T) {
	r := runExit(t, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t), "ip/"+outsideAddr, "node/k8s-w2:31010")
	if r.code != 2 || !strings.Contains(r.stderr, "trace its own traffic with --live") {
		t.Errorf("exit %d: %s; want 2, asking for --live", r.code, r.stderr)
	}
}
