package correlate

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

func scenarioNamed(t *testing.T, name string) scenario {
	t.Helper()
	for _, s := range scenarios() {
		if s.name == name {
			return s
		}
	}
	t.Fatalf("no scenario %q", name)
	return scenario{}
}

// indexOf returns the position of the first hop whose line contains all of
// parts, failing the test when there is none.
func indexOf(t *testing.T, hops []trace.Hop, parts ...string) int {
	t.Helper()
	for i, h := range hops {
		l := line(h)
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(l, p) }) {
			return i
		}
	}
	t.Fatalf("no hop with %q in\n%s", parts, describe(trace.Path{Hops: hops}))
	return -1
}

func countOf(hops []trace.Hop, parts ...string) int {
	n := 0
	for _, h := range hops {
		l := line(h)
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(l, p) }) {
			n++
		}
	}
	return n
}

func TestDirectionAcrossNAT(t *testing.T) {
	s := scenarioNamed(t, "nodeport-via-other-node")
	id := newIdentity(s.in.Flow, s.in.Translated, s.in.Hops)
	for _, tt := range []struct {
		name string
		p    *trace.Packet
		want trace.Direction
	}{
		{"as the client sent it", tcp("192.168.10.200:40001", "192.168.10.101:31010", "S", 64), trace.Request},
		{"after DNAT", tcp("192.168.10.200:40001", "172.16.184.2:80", "S", 63), trace.Request},
		{"after DNAT and SNAT", tcp("172.16.158.0:61234", "172.16.184.2:80", "S", 63), trace.Request},
		{"inner header of IPIP", ipip(tcp("172.16.158.0:61234", "172.16.184.2:80", "S", 63), w1IP, w2IP), trace.Request},
		{"reply as the pod sent it", tcp("172.16.184.2:80", "172.16.158.0:61234", "S.", 64), trace.Reply},
		{"reply with the SNAT undone", tcp("172.16.184.2:80", "192.168.10.200:40001", "S.", 62), trace.Reply},
		{"reply with both undone", tcp("192.168.10.101:31010", "192.168.10.200:40001", "S.", 62), trace.Reply},
		{"ICMP error to the client", &trace.Packet{Proto: trace.ICMP, Src: addr(w1IP), Dst: addr("192.168.10.200"), ICMPType: 3, ICMPCode: 3}, trace.Reply},
		{"another port of the client", tcp("192.168.10.200:40002", "192.168.10.101:31010", "S", 64), ""},
		{"another service", tcp("192.168.10.200:40001", "192.168.10.101:31011", "S", 64), ""},
		{"UDP with the same ports", &trace.Packet{Proto: trace.UDP, Src: addr("192.168.10.200"), SrcPort: 40001, Dst: addr(w1IP), DstPort: 31010}, ""},
		{"ICMP error to someone else", &trace.Packet{Proto: trace.ICMP, Src: addr(w1IP), Dst: addr("10.9.9.9"), ICMPType: 3}, ""},
	} {
		if got := id.direction(tt.p); got != tt.want {
			t.Errorf("%s: direction = %q, want %q", tt.name, got, tt.want)
		}
	}

	icmp := newIdentity(trace.Flow{Proto: trace.ICMP, Src: addr("172.16.158.7"), SrcPort: 7, Dst: addr("172.16.184.5")}, nil, nil)
	for _, tt := range []struct {
		name string
		p    *trace.Packet
		want trace.Direction
	}{
		{"echo request", echo("172.16.158.7", "172.16.184.5", 8, 7, 64), trace.Request},
		{"echo reply", echo("172.16.184.5", "172.16.158.7", 0, 7, 64), trace.Reply},
		{"another ping's reply", echo("172.16.184.5", "172.16.158.7", 0, 8, 64), ""},
		{"a reply sent the wrong way", echo("172.16.158.7", "172.16.184.5", 0, 7, 64), ""},
	} {
		if got := icmp.direction(tt.p); got != tt.want {
			t.Errorf("icmp %s: direction = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestAssignDirections(t *testing.T) {
	s := scenarioNamed(t, "same-node-proxy-arp")
	hops := assignDirections(newIdentity(s.in.Flow, nil, s.in.Hops), s.in.Hops)
	want := map[string]trace.Direction{
		"default/client eth0 request 172.16.158.16>169.254.1.1":   trace.Request, // the client resolves its gateway
		"calia7a3e029a7b reply 169.254.1.1>172.16.158.16":         trace.Request, // the host's proxy reply
		"cali7715d358f22 request 192.168.10.101>172.16.158.15":    trace.Request, // the host resolves the server
		"default/server eth0 request 172.16.158.15>169.254.1.1":   trace.Reply,   // the server resolves its gateway
		"default/server eth0 reply 169.254.1.1>172.16.158.15":     trace.Reply,
		"rule filter cali-FORWARD #5 ACCEPT":                      trace.Request,
		"route 172.16.158.15 dev cali7715d358f22 scope link":      trace.Request,
		"interface default/client eth0":                           trace.Request,
		"interface default/server eth0":                           trace.Request,
		"arp default/client eth0 reply 169.254.1.1>172.16.158.16": trace.Request,
	}
	for what, dir := range want {
		if h := hops[indexOf(t, hops, what)]; h.Direction != dir {
			t.Errorf("%s: direction %q, want %q", what, h.Direction, dir)
		}
	}
	if len(hops) != len(s.in.Hops)-1 {
		t.Errorf("kept %d of %d hops, want all but the other ping", len(hops), len(s.in.Hops))
	}
	for _, h := range hops {
		if h.Packet != nil && h.Packet.Dst == addr("8.8.8.8") {
			t.Errorf("the ping to 8.8.8.8 was kept: %s", line(h))
		}
	}

	// The handshake's ACK is a later packet of the connection: left out.
	c := scenarioNamed(t, "clusterip-across-nodes")
	hops = assignDirections(newIdentity(c.in.Flow, c.in.Translated, c.in.Hops), c.in.Hops)
	for _, h := range hops {
		if h.Packet != nil && h.Packet.TCPFlags == "." {
			t.Errorf("the ACK was kept: %s", line(h))
		}
	}
	if len(hops) != len(c.in.Hops)-2 {
		t.Errorf("kept %d of %d hops, want all but the two ACK captures", len(hops), len(c.in.Hops))
	}
}

func TestOrderPlacesRuleBlocksAtTheirStack(t *testing.T) {
	p := Correlate(scenarioNamed(t, "same-node-proxy-arp").in)
	ingress := indexOf(t, p.Hops, "request", "interface calia7a3e029a7b")
	egress := indexOf(t, p.Hops, "request", "interface cali7715d358f22")
	prerouting := indexOf(t, p.Hops, "request", "nat PREROUTING #1")
	policy := indexOf(t, p.Hops, "request", "nat PREROUTING policy ACCEPT")
	route := indexOf(t, p.Hops, "request", "route 172.16.158.15")
	forward := indexOf(t, p.Hops, "request", "filter FORWARD #1")
	postrouting := indexOf(t, p.Hops, "request", "nat KUBE-POSTROUTING #1")
	arp := indexOf(t, p.Hops, "request", "cali7715d358f22 request")
	// The rules were read 300µs after the packet left by cali7715…, yet
	// they come between the packet entering and leaving the node, in
	// hook order, with the lookup after PREROUTING.
	if !(ingress == prerouting-1 && prerouting < policy && policy == route-1 && route == forward-1 &&
		forward < postrouting && postrouting < arp && arp < egress) {
		t.Errorf("order: ingress %d, nat PREROUTING %d, policy %d, route %d, FORWARD %d, POSTROUTING %d, ARP %d, egress %d\n%s",
			ingress, prerouting, policy, route, forward, postrouting, arp, egress, describe(p))
	}

	// A rule block without a capture of the packet entering goes right
	// before the capture of it leaving.
	hops := []trace.Hop{
		seen(w1, "", "eth0", 10, tcp("192.168.10.101:40000", "10.0.0.1:80", "S", 64)),
		legacy(w1, 500, tcp("192.168.10.101:40000", "10.0.0.1:80", "S", 64), "filter", "OUTPUT", 0, ":OUTPUT ACCEPT", "", "eth0"),
		legacy(w1, 400, tcp("192.168.10.101:40000", "10.0.0.1:80", "S", 64), "raw", "OUTPUT", 0, ":OUTPUT ACCEPT", "", "eth0"),
	}
	flow := trace.Flow{Proto: trace.TCP, Src: addr(w1IP), SrcPort: 40000, Dst: addr("10.0.0.1"), DstPort: 80}
	p = Correlate(Input{Flow: flow, Hops: hops})
	if got := []string{line(p.Hops[0]), line(p.Hops[1]), line(p.Hops[2])}; !strings.Contains(got[0], "raw OUTPUT") ||
		!strings.Contains(got[1], "filter OUTPUT") || !strings.Contains(got[2], "interface eth0") {
		t.Errorf("locally sent packet: got %q, want raw OUTPUT, filter OUTPUT, then the capture", got)
	}

	// Sent by a veth captured inbound only, it was seen only where it
	// arrived, in the pod's namespace: the block goes right before that.
	hops = []trace.Hop{
		seen(w1, clientNetns, "eth0", 10, tcp("192.168.10.101:40000", "10.0.0.1:80", "S", 64)),
		legacy(w1, 500, tcp("192.168.10.101:40000", "10.0.0.1:80", "S", 64), "filter", "OUTPUT", 0, ":OUTPUT ACCEPT", "", clientVeth),
		legacy(w1, 400, tcp("192.168.10.101:40000", "10.0.0.1:80", "S", 64), "raw", "OUTPUT", 0, ":OUTPUT ACCEPT", "", clientVeth),
	}
	p = Correlate(Input{Flow: flow, Hops: hops})
	if got := []string{line(p.Hops[0]), line(p.Hops[1]), line(p.Hops[2])}; !strings.Contains(got[0], "raw OUTPUT") ||
		!strings.Contains(got[1], "filter OUTPUT") || !strings.Contains(got[2], "interface default/client eth0") {
		t.Errorf("sent by an inbound-only veth: got %q, want raw OUTPUT, filter OUTPUT, then the pod's capture", got)
	}
}

func TestOrderCorrectsClockSkew(t *testing.T) {
	s := scenarioNamed(t, "pod-to-pod-ipip-skewed")
	p := Correlate(s.in)
	var nodes []string
	for _, h := range p.Hops {
		if len(nodes) == 0 || nodes[len(nodes)-1] != string(h.Direction)+" "+h.Node {
			nodes = append(nodes, string(h.Direction)+" "+h.Node)
		}
	}
	want := []string{"request k8s-w1", "request k8s-w2", "reply k8s-w2", "reply k8s-w1"}
	if !slices.Equal(nodes, want) {
		t.Errorf("the path crosses %q, want %q\n%s", nodes, want, describe(p))
	}
	// k8s-w2 is 3ms behind: its hops are shifted by about that much, and
	// the captures' times now only go forward.
	w2Eth0 := p.Hops[indexOf(t, p.Hops, "request k8s-w2 interface eth0")]
	if shift := w2Eth0.Time.Sub(us(120 - 3000)); shift < 2900*time.Microsecond || shift > 3100*time.Microsecond {
		t.Errorf("k8s-w2 shifted by %v, want about 3ms", shift)
	}
	var last time.Time
	for _, h := range p.Hops {
		if h.Kind != trace.HopInterface {
			continue
		}
		if h.Time.Before(last) {
			t.Errorf("capture %s at %v goes back before %v", line(h), h.Time.Sub(t0), last.Sub(t0))
		}
		last = h.Time
	}

	// Clocks that agree are left alone.
	n := scenarioNamed(t, "nodeport-via-other-node")
	for _, h := range Correlate(n.in).Hops {
		if h.Source == "capture" && (h.Time.Before(t0) || h.Time.After(us(500))) {
			t.Errorf("nodeport: %s moved to %v", line(h), h.Time.Sub(t0))
		}
	}
}

func TestOffsetBound(t *testing.T) {
	for _, tt := range []struct {
		name string
		b    offsetBound
		want time.Duration
	}{
		{"clocks agree", offsetBound{lo: -time.Millisecond, hi: time.Millisecond, hasLo: true, hasHi: true}, 0},
		{"window above zero", offsetBound{lo: 2 * time.Millisecond, hi: 4 * time.Millisecond, hasLo: true, hasHi: true}, 3 * time.Millisecond},
		{"window below zero", offsetBound{lo: -5 * time.Millisecond, hi: -3 * time.Millisecond, hasLo: true, hasHi: true}, -4 * time.Millisecond},
		{"only a lower bound above zero", offsetBound{lo: time.Millisecond, hasLo: true}, time.Millisecond},
		{"only a lower bound below zero", offsetBound{lo: -time.Millisecond, hasLo: true}, 0},
		{"only an upper bound below zero", offsetBound{hi: -time.Millisecond, hasHi: true}, -time.Millisecond},
	} {
		if got := tt.b.value(); got != tt.want {
			t.Errorf("%s: value = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestMergeDuplicatesAndRetransmissions(t *testing.T) {
	p := Correlate(scenarioNamed(t, "forward-policy-drop").in)
	if n := countOf(p.Hops, "filter FORWARD policy DROP"); n != 1 {
		t.Fatalf("%d FORWARD policy hops, want the two SYNs and the nft report folded into one\n%s", n, describe(p))
	}
	drop := p.Hops[indexOf(t, p.Hops, "filter FORWARD policy DROP")]
	if !strings.Contains(drop.Note, "also reported by nftrace") || !strings.Contains(drop.Note, "+1 retransmission") {
		t.Errorf("note %q, want the nft report and the retransmission", drop.Note)
	}
	if drop.Time != us(155) {
		t.Errorf("kept the hop of %v, want the first SYN's", drop.Time.Sub(t0))
	}
	if got := len(p.Hops); got != 5 {
		t.Errorf("%d hops, want 5\n%s", got, describe(p))
	}

	// The same capture reported twice within the same transmission is
	// one hop without a note.
	s := scenarioNamed(t, "lost-on-the-way")
	s.in.Hops = append(s.in.Hops, s.in.Hops[1])
	p = Correlate(s.in)
	if n := countOf(p.Hops, "request k8s-w1 interface calia7a3e029a7b"); n != 1 {
		t.Errorf("%d captures on the client's veth, want 1", n)
	}
	if h := p.Hops[indexOf(t, p.Hops, "interface calia7a3e029a7b")]; h.Note != "" {
		t.Errorf("note %q on a capture reported twice by the same source", h.Note)
	}
}

func TestAttributeNAT(t *testing.T) {
	p := Correlate(scenarioNamed(t, "clusterip-across-nodes").in)
	sep := indexOf(t, p.Hops, "KUBE-SEP-TOJ6KBVFMXNEZ7KU #2 DNAT")
	nat := p.Hops[sep+1]
	if nat.Kind != trace.HopNAT || nat.NAT.ByChain != "KUBE-SEP-TOJ6KBVFMXNEZ7KU" || nat.NAT.ByRule == nil ||
		!strings.Contains(nat.NAT.ByRule.Text, "--to-destination 172.16.184.2:80") {
		t.Errorf("after the DNAT rule: %s, want the DNAT attributed to it", line(nat))
	}

	p = Correlate(scenarioNamed(t, "nodeport-via-other-node").in)
	dnat := p.Hops[indexOf(t, p.Hops, "KUBE-SEP-6GHSQDSCB2WQHVBB #2 DNAT")+1]
	snat := p.Hops[indexOf(t, p.Hops, "KUBE-POSTROUTING #3 MASQUERADE")+1]
	if dnat.NAT == nil || dnat.NAT.Type != "DNAT" || dnat.NAT.To != ap("172.16.184.2:80") {
		t.Errorf("after KUBE-SEP: %s, want the DNAT to 172.16.184.2:80", line(dnat))
	}
	if snat.NAT == nil || snat.NAT.Type != "SNAT" || snat.NAT.ByChain != "KUBE-POSTROUTING" || snat.NAT.To != ap("172.16.158.0:61234") {
		t.Errorf("after MASQUERADE: %s, want the SNAT by KUBE-POSTROUTING", line(snat))
	}

	// Without the nat table traced, the rewrite stays where its time puts
	// it, unattributed.
	s := scenarioNamed(t, "nodeport-via-other-node")
	s.in.Hops = slices.DeleteFunc(s.in.Hops, func(h trace.Hop) bool { return h.Rule != nil && h.Rule.Table == "nat" })
	p = Correlate(s.in)
	for _, h := range p.Hops {
		if h.NAT != nil && (h.NAT.ByChain != "" || h.NAT.ByRule != nil) {
			t.Errorf("%s attributed with the nat table untraced", line(h))
		}
	}
	// conntrack read the entry after the packet had left k8s-w1: the
	// rewrites stay in k8s-w1's part, before the packet leaves.
	natAt := indexOf(t, p.Hops, "nat DNAT")
	if before, after := line(p.Hops[natAt-1]), line(p.Hops[natAt+2]); before != "request k8s-w1 interface tunl0" ||
		!strings.HasPrefix(after, "request k8s-w1 encap") {
		t.Errorf("unattributed NAT between %q and %q\n%s", before, after, describe(p))
	}
	// The input was not changed.
	for _, h := range scenarioNamed(t, "nodeport-via-other-node").in.Hops {
		if h.NAT != nil && h.NAT.ByChain != "" {
			t.Errorf("input NAT hop was modified: %s", line(h))
		}
	}
}

func TestDeriveTunnels(t *testing.T) {
	p := Correlate(scenarioNamed(t, "clusterip-across-nodes").in)
	encap := indexOf(t, p.Hops, "request k8s-w1 encap")
	decap := indexOf(t, p.Hops, "request k8s-w2 decap")
	if !strings.Contains(line(p.Hops[encap-1]), "interface tunl0") || !strings.Contains(line(p.Hops[encap+1]), "interface eth0") {
		t.Errorf("encap not between tunl0 and eth0\n%s", describe(p))
	}
	if !strings.Contains(line(p.Hops[decap-1]), "interface eth0") || !strings.Contains(line(p.Hops[decap+1]), "interface tunl0") {
		t.Errorf("decap not between eth0 and tunl0\n%s", describe(p))
	}
	e := p.Hops[encap]
	want := trace.Tunnel{Type: "ipip", Src: addr(w1IP), Dst: addr(w2IP)}
	if e.Iface != "tunl0" || e.Source != SourceName || *e.Tunnel != want || e.Packet.Dst != addr("172.16.184.2") || *e.Packet.Outer != want {
		t.Errorf("encap hop %+v, tunnel %+v", e, e.Tunnel)
	}
	if n := countOf(p.Hops, "reply k8s-w2 encap"); n != 1 {
		t.Errorf("%d encaps of the reply on k8s-w2, want 1", n)
	}
	if n := countOf(p.Hops, "reply k8s-w1 decap"); n != 1 {
		t.Errorf("%d decaps of the reply on k8s-w1, want 1", n)
	}

	// With only the tunnel device captured, the route lookup names the
	// device, and the encap follows the last capture on it.
	s := scenarioNamed(t, "pod-to-pod-ipip-skewed")
	s.in.Hops = slices.DeleteFunc(s.in.Hops, func(h trace.Hop) bool { return h.Packet != nil && h.Packet.Outer != nil })
	p = Correlate(s.in)
	encap = indexOf(t, p.Hops, "request k8s-w1 encap tunl0")
	if !strings.Contains(line(p.Hops[encap-1]), "request k8s-w1 interface tunl0") {
		t.Errorf("encap does not follow the tunl0 capture\n%s", describe(p))
	}
	if tun := p.Hops[encap].Tunnel; tun.Type != "ipip" || tun.Dst.IsValid() {
		t.Errorf("tunnel %+v, want ipip without outer addresses nobody saw", tun)
	}
	decap = indexOf(t, p.Hops, "request k8s-w2 decap tunl0")
	if !strings.Contains(line(p.Hops[decap+1]), "request k8s-w2 interface tunl0") {
		t.Errorf("decap does not precede the tunl0 capture\n%s", describe(p))
	}
	if encaps, decaps := countOf(p.Hops, "encap tunl0"), countOf(p.Hops, "decap tunl0"); encaps != 2 || decaps != 2 {
		t.Errorf("%d encaps and %d decaps, want one of each per direction\n%s", encaps, decaps, describe(p))
	}
}

func TestDeriveDelivery(t *testing.T) {
	for _, tt := range []struct {
		scenario string
		want     string
	}{
		{"same-node-proxy-arp", "request k8s-w1 deliver default/server eth0 (delivered to default/server)"},
		{"clusterip-across-nodes", "request k8s-w2 deliver default/nginx-test-6d4cf56db6-2x8kq eth0 (delivered to default/nginx-test-6d4cf56db6-2x8kq)"},
		{"nodeport-via-other-node", "request k8s-w2 deliver cali3f2a1b4c5d6 (delivered to default/nginx-nodeport-test-866cfc566c-pf7mm)"},
		{"forward-policy-drop", ""},
		{"lost-on-the-way", ""},
	} {
		p := Correlate(scenarioNamed(t, tt.scenario).in)
		var got []string
		for i, h := range p.Hops {
			if h.Kind == trace.HopDeliver {
				got = append(got, line(h))
				if prev := p.Hops[i-1]; prev.Kind != trace.HopInterface || prev.Iface != h.Iface || prev.Netns != h.Netns {
					t.Errorf("%s: deliver does not follow its capture: %s", tt.scenario, line(prev))
				}
			}
		}
		if tt.want == "" && len(got) > 0 || tt.want != "" && !slices.Equal(got, []string{tt.want}) {
			t.Errorf("%s: deliver hops %q, want %q", tt.scenario, got, tt.want)
		}
	}

	// Without the destinations, a request seen last in another pod's
	// netns is delivered there, and one seen last on the client's own
	// veth is not.
	s := scenarioNamed(t, "same-node-proxy-arp")
	s.in.Destinations = nil
	p := Correlate(s.in)
	indexOf(t, p.Hops, "deliver default/server eth0 (delivered to default/server)")
	s = scenarioNamed(t, "lost-on-the-way")
	s.in.Destinations = nil
	s.in.Hops = slices.DeleteFunc(s.in.Hops, func(h trace.Hop) bool {
		return h.Kind == trace.HopInterface && (h.Iface == "tunl0" || h.Iface == "eth0" && h.Netns == "")
	})
	if n := countOf(Correlate(s.in).Hops, "deliver"); n != 0 {
		t.Errorf("a request seen last on the client's veth was delivered")
	}
}

func TestVerdict(t *testing.T) {
	for _, tt := range []struct {
		scenario string
		want     trace.Verdict
	}{
		{"same-node-proxy-arp", trace.Verdict{Result: trace.Replied, Reason: "echo reply"}},
		{"clusterip-across-nodes", trace.Verdict{Result: trace.Replied, Reason: "SYN-ACK"}},
		{"pod-to-pod-ipip-skewed", trace.Verdict{Result: trace.Replied, Reason: "echo reply"}},
		{"nodeport-via-other-node", trace.Verdict{Result: trace.Replied, Reason: "SYN-ACK"}},
		{"reject-no-endpoints", trace.Verdict{Result: trace.Dropped, Node: w1, Where: "filter KUBE-SERVICES #3 REJECT",
			Reason: "default/nginx-test:80 has no endpoints"}},
		{"forward-policy-drop", trace.Verdict{Result: trace.Dropped, Node: w1, Where: "filter FORWARD policy DROP",
			Reason: "no rule of filter FORWARD accepted the packet and the chain's policy is DROP"}},
		{"lost-on-the-way", trace.Verdict{Result: trace.NoAnswer, Node: w1, Where: "eth0",
			Reason: "the request was last seen at eth0 and nothing came back (no answer after 2s); " +
				"42 events were lost (k8s-w2 capture, k8s-w2 nflog), which may hide the rest of the path"}},
	} {
		if got := Correlate(scenarioNamed(t, tt.scenario).in).Verdict; got != tt.want {
			t.Errorf("%s: verdict %+v, want %+v", tt.scenario, got, tt.want)
		}
	}

	// Without a probe, a reply seen reaching the client is enough.
	s := scenarioNamed(t, "nodeport-via-other-node")
	s.in.Answer = nil
	if v := Correlate(s.in).Verdict; v.Result != trace.Replied || v.Reason != "the reply reached 192.168.10.200" {
		t.Errorf("no probe: %+v", v)
	}
	// Delivered, no reply seen, with losses that may hide it.
	s = scenarioNamed(t, "clusterip-across-nodes")
	s.in.Answer = nil
	s.in.Hops = slices.DeleteFunc(s.in.Hops, func(h trace.Hop) bool { return h.Packet != nil && h.Packet.TCPFlags == "S." })
	s.in.Lost = []trace.Loss{{Node: w2, Source: "capture", Count: 3, Detail: "eth0: 3 packets dropped"}}
	want := trace.Verdict{Result: trace.Delivered, Node: w2, Where: nginxPod + " eth0",
		Reason: nginxPod + " got the request but no reply was seen; 3 events were lost (k8s-w2 capture), which may hide the rest of the path"}
	if v := Correlate(s.in).Verdict; v != want {
		t.Errorf("delivered: %+v, want %+v", v, want)
	}
	// A refusal the hops do not explain is a drop where it was first seen.
	s = scenarioNamed(t, "reject-no-endpoints")
	s.in.Hops = slices.DeleteFunc(s.in.Hops, func(h trace.Hop) bool { return h.Rule != nil && h.Rule.Table == "filter" })
	want = trace.Verdict{Result: trace.Dropped, Node: w1, Where: clientVeth, Reason: "ICMP port unreachable from 192.168.10.101"}
	if v := Correlate(s.in).Verdict; v != want {
		t.Errorf("refused: %+v, want %+v", v, want)
	}
	// A blackhole route ends the request.
	s = scenarioNamed(t, "forward-policy-drop")
	s.in.Hops = slices.DeleteFunc(s.in.Hops, func(h trace.Hop) bool { return h.Rule != nil && h.Rule.Table == "filter" || h.Route != nil })
	s.in.Hops = append(s.in.Hops, lookup(w1, clientVeth, 3_000_000, trace.Route{Dst: netip.MustParsePrefix("172.16.158.0/24"),
		Type: "blackhole", Table: 254, Text: "blackhole 172.16.158.0/24 proto bird"}))
	want = trace.Verdict{Result: trace.Dropped, Node: w1, Where: "route blackhole 172.16.158.0/24 proto bird",
		Reason: "172.16.158.0/24 is a blackhole route: the kernel discards the packet silently"}
	if v := Correlate(s.in).Verdict; v != want {
		t.Errorf("blackhole: %+v, want %+v", v, want)
	}
	// Nothing seen at all.
	if v := Correlate(Input{Flow: s.in.Flow, Lost: s.in.Lost}).Verdict; v.Result != trace.NoAnswer || v.Reason != "nothing of the request was seen" {
		t.Errorf("empty: %+v", v)
	}
}

func TestTargetAndComment(t *testing.T) {
	for _, tt := range []struct {
		rule            trace.Rule
		target, comment string
	}{
		{trace.Rule{Type: "rule", Text: ruleSepNginx}, "DNAT", "default/nginx-test"},
		{trace.Rule{Type: "rule", Text: ruleSvcNginxEp2}, "KUBE-SEP-TOJ6KBVFMXNEZ7KU", "default/nginx-test -> 172.16.184.2:80"},
		{trace.Rule{Type: "rule", Text: `-A cali-from-wl-dispatch -i calia7a3e029a7b -g cali-fw-calia7a3e029a7b`}, "cali-fw-calia7a3e029a7b", ""},
		{trace.Rule{Type: "rule", Text: `-A KUBE-FORWARD -m conntrack --ctstate INVALID -m comment --comment "drop invalid" -j DROP`}, "DROP", "drop invalid"},
		{trace.Rule{Type: "policy", Text: ":FORWARD DROP", Verdict: "drop"}, "DROP", ""},
		{trace.Rule{Type: "policy", Text: "policy accept", Verdict: "accept"}, "ACCEPT", ""},
		{trace.Rule{Type: "return", Verdict: "return"}, "RETURN", ""},
		{trace.Rule{Type: "rule", Text: `ip daddr 10.96.0.10 tcp dport 53 counter packets 0 bytes 0 dnat to 172.16.1.2:53 comment "kube-dns accept drop"`}, "DNAT", "kube-dns accept drop"},
		{trace.Rule{Type: "rule", Text: `meta mark & 0x00004000 == 0x00004000 masquerade fully-random`}, "MASQUERADE", ""},
		{trace.Rule{Type: "rule", Text: `ip daddr 10.96.50.50 reject with icmp port-unreachable`}, "REJECT", ""},
		{trace.Rule{Type: "rule", Text: `ip daddr 10.96.0.10 jump service-XYZ`}, "service-XYZ", ""},
		{trace.Rule{Type: "rule", Verdict: "jump KUBE-SERVICES"}, "KUBE-SERVICES", ""},
		{trace.Rule{Type: "rule", Text: `-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000`}, "MARK", ""},
	} {
		if got := Target(&tt.rule); got != tt.target {
			t.Errorf("Target(%q) = %q, want %q", tt.rule.Text, got, tt.target)
		}
		if got := Comment(&tt.rule); got != tt.comment {
			t.Errorf("Comment(%q) = %q, want %q", tt.rule.Text, got, tt.comment)
		}
	}
}

func TestCorrelateLeavesInputAlone(t *testing.T) {
	for _, s := range scenarios() {
		before, err := json.Marshal(s.in)
		if err != nil {
			t.Fatal(err)
		}
		p := Correlate(s.in)
		after, _ := json.Marshal(s.in)
		if string(before) != string(after) {
			t.Errorf("%s: Correlate changed its input", s.name)
		}
		if p.SchemaVersion != trace.SchemaVersion || !reflect.DeepEqual(p.Flow, s.in.Flow) || len(p.Nodes) == 0 {
			t.Errorf("%s: path header %q %v %v", s.name, p.SchemaVersion, p.Flow, p.Nodes)
		}
		for _, h := range p.Hops {
			if h.Direction == "" {
				t.Errorf("%s: hop without direction: %s", s.name, line(h))
			}
		}
	}
}

// TestCorrelateIgnoresInputOrder shuffles the hops of every fixture: the
// sources hand them over in any order, and the path must not change.
func TestCorrelateIgnoresInputOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range scenarios() {
		want, _ := json.Marshal(Correlate(s.in))
		for range 20 {
			in := s.in
			in.Hops = slices.Clone(s.in.Hops)
			rng.Shuffle(len(in.Hops), func(i, j int) { in.Hops[i], in.Hops[j] = in.Hops[j], in.Hops[i] })
			if got, _ := json.Marshal(Correlate(in)); string(got) != string(want) {
				t.Fatalf("%s: shuffled hops give\n%s\nwant\n%s", s.name, describe(Correlate(in)), describe(Correlate(s.in)))
			}
		}
	}
	if p := Correlate(Input{}); len(p.Hops) != 0 || p.Verdict.Result != trace.NoAnswer {
		t.Errorf("empty input: %+v", p)
	}
}
