package conntrack_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/conntrack"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
	"github.com/kubectl-nettrace/nettrace/trace/probe/probetest"
)

// hops collects emitted hops for a test to wait on.
type hops struct {
	mu   sync.Mutex
	list []trace.Hop
}

func (h *hops) emit(hop trace.Hop) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.list = append(h.list, hop)
}

// wait returns the hops once there are n, or whatever arrived within 5s.
func (h *hops) wait(n int) []trace.Hop {
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		h.mu.Lock()
		if len(h.list) >= n {
			h.mu.Unlock()
			break
		}
		h.mu.Unlock()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]trace.Hop(nil), h.list...)
}

// plan plans a probe in the lab's client.
func plan(t *testing.T, lab *probetest.Lab, spec probe.Spec) *probe.Probe {
	t.Helper()
	var p *probe.Probe
	err := lab.Client.Do(func(ns.NetNS) error {
		var err error
		p, err = probe.Plan(spec)
		return err
	})
	if err != nil {
		t.Fatalf("planning %s probe: %v", spec.Kind, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// arm arms a conntrack source for flow in the lab's router.
func arm(t *testing.T, lab *probetest.Lab, flow trace.Flow, got *hops) *conntrack.Source {
	t.Helper()
	src := conntrack.New(conntrack.Config{Node: "router", Netns: "router",
		Match: trace.Match{Proto: flow.Proto, Ports: []uint16{flow.SrcPort}, Addrs: []netip.Addr{flow.Src, flow.Dst}}})
	err := lab.Router.Do(func(ns.NetNS) error { return src.Arm(context.Background(), got.emit) })
	if err != nil {
		t.Fatalf("arming conntrack source: %v", err)
	}
	return src
}

func closeSource(t *testing.T, src *conntrack.Source) {
	t.Helper()
	lost, err := src.Close()
	if err != nil {
		t.Errorf("Close: %v", err)
	}
	if len(lost) > 0 {
		t.Errorf("Close reported losses: %+v", lost)
	}
}

// wantNAT is the DNAT and SNAT the lab's router applies to a probe from
// the client to the service address.
func wantNAT(flow trace.Flow, serverPort uint16) []trace.NAT {
	original := trace.Tuple{Proto: flow.Proto,
		Src: netip.AddrPortFrom(flow.Src, flow.SrcPort), Dst: netip.AddrPortFrom(flow.Dst, flow.DstPort)}
	reply := trace.Tuple{Proto: flow.Proto,
		Src: netip.AddrPortFrom(probetest.ServerIP, serverPort),
		Dst: netip.AddrPortFrom(probetest.RouterServerIP, flow.SrcPort)}
	return []trace.NAT{
		{Type: "DNAT", From: original.Dst, To: reply.Src, Original: original, Reply: reply},
		{Type: "SNAT", From: original.Src, To: reply.Dst, Original: original, Reply: reply},
	}
}

func checkHops(t *testing.T, got []trace.Hop, want []trace.NAT) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d hops %+v, want %d NAT hops", len(got), got, len(want))
	}
	for i, hop := range got {
		if hop.Kind != trace.HopNAT || hop.Source != "conntrack" || hop.Node != "router" ||
			hop.Direction != trace.Request || hop.Time.IsZero() || hop.NAT == nil {
			t.Errorf("hop %d = %+v, want a request NAT hop from conntrack on router", i, hop)
			continue
		}
		if *hop.NAT != want[i] {
			t.Errorf("hop %d NAT = %+v\nwant %+v", i, *hop.NAT, want[i])
		}
	}
}

func TestSourceReportsServiceNAT(t *testing.T) {
	lab := probetest.New(t)
	tests := []struct {
		spec       probe.Spec
		serverPort uint16
	}{
		{probe.Spec{Kind: probe.TCP, Dst: probetest.ServiceIP, DstPort: 80}, probetest.TCPPort},
		{probe.Spec{Kind: probe.UDP, Dst: probetest.ServiceIP, DstPort: 7}, probetest.EchoPort},
		{probe.Spec{Kind: probe.DNS, Dst: probetest.ServiceIP, Question: probetest.DNSName}, probetest.DNSPort},
		{probe.Spec{Kind: probe.ICMP, Dst: probetest.ServiceIP}, 0},
	}
	for _, tt := range tests {
		t.Run(string(tt.spec.Kind), func(t *testing.T) {
			p := plan(t, lab, tt.spec)
			var got hops
			src := arm(t, lab, p.Flow(), &got)
			res, err := p.Send(context.Background())
			if err != nil || res.Answer != probe.Replied {
				t.Fatalf("probe: %+v, %v; want a reply through the NAT", res, err)
			}
			checkHops(t, got.wait(2), wantNAT(p.Flow(), tt.serverPort))
			closeSource(t, src)
			if n := len(got.wait(2)); n != 2 {
				t.Errorf("%d hops after the update and destroy events, want each rewrite reported once", n)
			}

			request, back := conntrack.Flows(got.list[0].NAT.Original, got.list[0].NAT.Reply)
			wantRequest := trace.Flow{Proto: p.Flow().Proto, Src: probetest.RouterServerIP, SrcPort: p.Flow().SrcPort,
				Dst: probetest.ServerIP, DstPort: tt.serverPort}
			if request != wantRequest {
				t.Errorf("request after NAT = %v, want %v", request, wantRequest)
			}
			if back.Src != probetest.ServerIP || back.Dst != probetest.RouterServerIP {
				t.Errorf("reply flow = %v, want from the server to the router", back)
			}
		})
	}
}

func TestSourceDumpsExistingEntries(t *testing.T) {
	lab := probetest.New(t)
	p := plan(t, lab, probe.Spec{Kind: probe.TCP, Dst: probetest.ServiceIP, DstPort: 80})
	flow := p.Flow()
	if res, err := p.Send(context.Background()); err != nil || res.Answer != probe.Replied {
		t.Fatalf("probe: %+v, %v", res, err)
	}
	var got hops
	src := arm(t, lab, flow, &got)
	checkHops(t, got.wait(2), wantNAT(flow, probetest.TCPPort))
	closeSource(t, src)
}

func TestSourceEnablesEventsAndRestores(t *testing.T) {
	lab := probetest.New(t)
	const sysctl = "net.netfilter.nf_conntrack_events"
	probetest.Run(t, lab.Router, "sysctl", "-qw", sysctl+"=0")
	p := plan(t, lab, probe.Spec{Kind: probe.UDP, Dst: probetest.ServiceIP, DstPort: 7})
	var got hops
	src := arm(t, lab, p.Flow(), &got)
	if v := strings.TrimSpace(probetest.Run(t, lab.Router, "sysctl", "-n", sysctl)); v != "1" {
		t.Errorf("while armed, %s = %s, want 1", sysctl, v)
	}
	if res, err := p.Send(context.Background()); err != nil || res.Answer != probe.Replied {
		t.Fatalf("probe: %+v, %v", res, err)
	}
	checkHops(t, got.wait(2), wantNAT(p.Flow(), probetest.EchoPort))
	// Close from a thread outside the router's netns: the setting must
	// still be restored there, and the host's left alone.
	hostBefore, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_events")
	closeSource(t, src)
	if v := strings.TrimSpace(probetest.Run(t, lab.Router, "sysctl", "-n", sysctl)); v != "0" {
		t.Errorf("after Close, %s = %s, want 0 restored", sysctl, v)
	}
	if hostAfter, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_events"); string(hostAfter) != string(hostBefore) {
		t.Errorf("Close changed the test process's own %s from %q to %q", sysctl, hostBefore, hostAfter)
	}
}

// TestSourceWiden arms a source whose match misses the probe's entry, and
// widens it once the entry is in the table: the dump that Widen makes finds
// the entry whose new event went by unmatched.
func TestSourceWiden(t *testing.T) {
	lab := probetest.New(t)
	p := plan(t, lab, probe.Spec{Kind: probe.TCP, Dst: probetest.ServiceIP, DstPort: 80})
	flow := p.Flow()
	var got hops
	other := trace.Match{Proto: trace.TCP, Ports: []uint16{flow.SrcPort + 1}}
	src := conntrack.New(conntrack.Config{Node: "router", Netns: "router", Match: other})
	if err := lab.Router.Do(func(ns.NetNS) error { return src.Arm(context.Background(), got.emit) }); err != nil {
		t.Fatalf("arming conntrack source: %v", err)
	}
	if res, err := p.Send(context.Background()); err != nil || res.Answer != probe.Replied {
		t.Fatalf("probe: %+v, %v", res, err)
	}
	time.Sleep(100 * time.Millisecond) // the entry's events go by
	if n := len(got.wait(0)); n != 0 {
		t.Fatalf("before widening, %d hops, want none", n)
	}
	widened := other.Clone()
	widened.Ends = append(widened.Ends, netip.AddrPortFrom(probetest.ServerIP, probetest.TCPPort))
	if err := src.Widen(widened); err != nil {
		t.Fatalf("Widen: %v", err)
	}
	checkHops(t, got.wait(2), wantNAT(flow, probetest.TCPPort))
	closeSource(t, src)
	if err := src.Widen(widened); err == nil {
		t.Error("Widen after Close: no error")
	}
}
