package netfilter

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// rawTable is a legacy-style raw table for the router: with it, the legacy
// backend arms TRACE rules; without it, the nft marker.
const rawTable = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
	"-A PREROUTING -p udp -m udp --dport 6081 -j NOTRACK\nCOMMIT\n"

// loadRules loads the kube-proxy-shaped rules into the router with
// iptables-legacy-restore or iptables-nft-restore.
func loadRules(t *testing.T, n *testNetns, backend Backend, withRaw bool) {
	t.Helper()
	rules, err := os.ReadFile("testdata/kube-proxy.rules")
	if err != nil {
		t.Fatal(err)
	}
	if withRaw {
		rules = append(rules, rawTable...)
	}
	n.mustRun(t, string(rules), fmt.Sprintf("iptables-%s-restore", backend))
}

// hopLine is what the path tests compare of a rule hop.
func hopLine(h trace.Hop) string {
	r := h.Rule
	return fmt.Sprintf("%s %s %s #%d %s | %s", r.Table, r.Chain, r.Type, r.Number, r.Verdict, r.Text)
}

func hopLines(hops []trace.Hop) []string {
	lines := make([]string, len(hops))
	for i, h := range hops {
		lines[i] = hopLine(h)
	}
	return lines
}

func diffLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	t.Errorf("%s:\n got:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
}

// The lines of the router's rules that the paths below hit.
const (
	rawPolicy        = "raw PREROUTING policy #0 accept | :PREROUTING ACCEPT"
	natPrerouting    = `nat PREROUTING rule #1 jump KUBE-SERVICES | -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`
	natServices      = `nat KUBE-SERVICES rule #1 jump KUBE-SVC-XXXX | -A KUBE-SERVICES -d 10.96.0.100/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-XXXX`
	natServicesEnd   = "nat KUBE-SERVICES return #0 return | "
	natPreroutingEnd = "nat PREROUTING policy #0 accept | :PREROUTING ACCEPT"
	natSvcMasq       = `nat KUBE-SVC-XXXX rule #1 jump KUBE-MARK-MASQ | -A KUBE-SVC-XXXX ! -s 172.16.0.0/16 -d 10.96.0.100/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ`
	natMarkMasq      = "nat KUBE-MARK-MASQ rule #1 continue | -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
	natMarkMasqEnd   = "nat KUBE-MARK-MASQ return #0 return | "
	natSvcSepA       = `nat KUBE-SVC-XXXX rule #2 jump KUBE-SEP-AAAA | -A KUBE-SVC-XXXX -m comment --comment "default/web -> 10.2.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AAAA`
	natSvcSepB       = `nat KUBE-SVC-XXXX rule #3 jump KUBE-SEP-BBBB | -A KUBE-SVC-XXXX -m comment --comment "default/web -> 10.2.0.3:8080" -j KUBE-SEP-BBBB`
	natSepADNAT      = `nat KUBE-SEP-AAAA rule #2 accept | -A KUBE-SEP-AAAA -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 10.2.0.2:8080`
	natSepBDNAT      = `nat KUBE-SEP-BBBB rule #2 accept | -A KUBE-SEP-BBBB -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 10.2.0.3:8080`
	filterForward    = `filter FORWARD rule #1 jump KUBE-FORWARD | -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`
	kubeForwardMark  = `filter KUBE-FORWARD rule #2 accept | -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`
	kubeForwardCT    = `filter KUBE-FORWARD rule #3 accept | -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`
	kubeForwardEnd   = "filter KUBE-FORWARD return #0 return | "
	forwardDrop      = "filter FORWARD rule #2 drop | -A FORWARD -p tcp -m tcp --dport 9 -j DROP"
	forwardReject    = "filter FORWARD rule #3 drop | -A FORWARD -p tcp -m tcp --dport 7 -j REJECT --reject-with tcp-reset"
	forwardAccept    = "filter FORWARD rule #4 accept | -A FORWARD -d 10.2.0.0/24 -j ACCEPT"
	natPostrouting   = `nat POSTROUTING rule #1 jump KUBE-POSTROUTING | -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`
	natPostNotMarked = "nat KUBE-POSTROUTING rule #1 return | -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
	natPostUnmark    = "nat KUBE-POSTROUTING rule #2 continue | -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"
	natPostMasq      = `nat KUBE-POSTROUTING rule #3 accept | -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE`
	natPostEnd       = "nat POSTROUTING policy #0 accept | :POSTROUTING ACCEPT"
)

// dnatConnection is every rule a TCP connection to the service meets on the
// router: the SYN walks the nat chains to the endpoint that KUBE-SVC-XXXX
// picked and is masqueraded; the SYN-ACK, the ACK and the client's RST are
// accepted as established.
func dnatConnection(sepA bool) []string {
	svcSep, sepDNAT := natSvcSepB, natSepBDNAT
	if sepA {
		svcSep, sepDNAT = natSvcSepA, natSepADNAT
	}
	established := []string{rawPolicy, filterForward, kubeForwardCT}
	syn := []string{rawPolicy, natPrerouting, natServices, natSvcMasq, natMarkMasq, natMarkMasqEnd, svcSep, sepDNAT,
		filterForward, kubeForwardMark, natPostrouting, natPostUnmark, natPostMasq}
	path := slices.Concat(syn, established, established, established)
	return path
}

// connectAndReset opens a TCP connection through the service from a fixed
// source port, and resets it, so that exactly four packets cross the router.
func connectAndReset(t *testing.T, l *lab, port int) {
	t.Helper()
	conn, err := l.dial(t, port, serviceIP+":80", 2*time.Second)
	if err != nil {
		t.Fatalf("connecting to the service: %v", err)
	}
	// Let the ACK cross the router before the RST.
	time.Sleep(50 * time.Millisecond)
	if err := conn.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

func TestTCPThroughDNAT(t *testing.T) {
	for _, backend := range []Backend{Legacy, Nft} {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			loadRules(t, l.router, backend, true)
			l.listen(t, 8080)
			before := netfilterState(t, l.router)
			port := freePort()
			var c collector
			tr := arm(t, l.router, Options{Node: "router", Netns: "router-ns", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(port)}}}, c.emit)
			if got := tr.Backends(); !slices.Equal(got, []Backend{backend}) {
				t.Fatalf("backends %v, want %v", got, backend)
			}
			connectAndReset(t, l, port)
			hops := c.settle(200 * time.Millisecond)
			losses, err := tr.Close()
			if err != nil || len(losses) != 0 {
				t.Fatalf("Close = %v, %v", losses, err)
			}

			lines := hopLines(hops)
			diffLines(t, "rules hit", lines, dnatConnection(slices.Contains(lines, natSvcSepA)))
			source := map[Backend]string{Legacy: SourceNflog, Nft: SourceNftrace}[backend]
			for _, h := range hops {
				if h.Kind != trace.HopRule || h.Source != source || h.Rule.Backend != string(backend) || h.Node != "router" || h.Netns != "router-ns" {
					t.Fatalf("hop %+v: want a rule hop of %s from %s on router", h, backend, source)
				}
			}
			// The SYN as it entered, as it was forwarded after DNAT and
			// with the masquerade mark, and the SYN-ACK before de-NAT.
			syn, fwd, synAck := hops[0], hops[9], hops[13]
			if p := syn.Packet; p.Src.String() != clientIP.String() || p.Dst.String() != serviceIP || p.DstPort != 80 || p.TCPFlags != "S" || syn.Iface != "r0" {
				t.Errorf("first hop saw %+v on %q, want the SYN to the service on r0", p, syn.Iface)
			}
			if p := fwd.Packet; p.DstPort != 8080 || p.Mark != 0x4000 || fwd.Rule.Mark != 0x4000 || fwd.Rule.InIface != "r0" || fwd.Rule.OutIface != "r1" {
				t.Errorf("KUBE-FORWARD saw %+v, rule %+v: want the DNATed SYN with mark 0x4000 from r0 to r1", p, fwd.Rule)
			}
			if p := synAck.Packet; p.SrcPort != 8080 || p.DstPort != uint16(port) || p.Dst.String() != "10.2.0.1" || p.TCPFlags != "S." || synAck.Iface != "r1" {
				t.Errorf("the reply's first hop saw %+v on %q, want the SYN-ACK to the masquerading router on r1", p, synAck.Iface)
			}
			if backend == Nft {
				if fwd.Rule.Handle == 0 || !strings.HasPrefix(fwd.Note, "nft trace id ") || fwd.Note != hops[1].Note || fwd.Note == synAck.Note {
					t.Errorf("nft hops: handle %d, notes %q %q %q: want handles and one trace id per packet", fwd.Rule.Handle, hops[1].Note, fwd.Note, synAck.Note)
				}
			}
			if after := netfilterState(t, l.router); after != before {
				t.Errorf("Close left the router changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestWiden widens an armed tracer, as the engine does when a NAT gives the
// flow a port its match lacks, on every way of arming: a connection from a
// port the tracer does not select leaves no hop; once widened to that port,
// or to the client's end, the connection's rules are traced; Close removes
// what Widen added with the rest.
func TestWiden(t *testing.T) {
	for _, kind := range nodeKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			kind.load(t, l.router)
			l.listen(t, 8080)
			before := netfilterState(t, l.router)
			armed, unseen := freePort(), freePort()
			// Ports nothing sends to, between armed and the widened ones, so
			// that the widened match names more ports than one multiport
			// match takes and the widened port is in the second.
			var fillers []uint16
			for range multiportMax {
				fillers = append(fillers, uint16(freePort()))
			}
			widenedPort, widenedEnd := freePort(), freePort()
			var c collector
			tr := arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(armed)}}}, c.emit)

			connectAndReset(t, l, unseen)
			time.Sleep(200 * time.Millisecond)
			if n := c.len(); n != 0 {
				t.Fatalf("%d hops of a port the tracer does not select", n)
			}
			widened := trace.Match{Proto: trace.TCP, Ports: append([]uint16{uint16(armed), uint16(widenedPort)}, fillers...),
				Ends: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(clientIP.String()), uint16(widenedEnd))}}
			if err := tr.Widen(widened); err != nil {
				t.Fatalf("Widen: %v", err)
			}
			if err := tr.Widen(widened); err != nil {
				t.Fatalf("Widen to the same match: %v", err)
			}

			// iptables' own tables, without raw: "legacy without raw" has none.
			iptables := func(hops []trace.Hop) []string {
				var lines []string
				for _, h := range hops {
					if h.Rule.Table == "nat" || h.Rule.Table == "filter" {
						lines = append(lines, hopLine(h))
					}
				}
				return lines
			}
			connectAndReset(t, l, widenedPort)
			lines := iptables(c.settle(200 * time.Millisecond))
			want := slices.DeleteFunc(dnatConnection(slices.Contains(lines, natSvcSepA)), func(s string) bool { return s == rawPolicy })
			diffLines(t, "rules hit from the widened port", lines, want)

			c.mu.Lock()
			c.hops = nil
			c.mu.Unlock()
			connectAndReset(t, l, widenedEnd)
			lines = iptables(c.settle(200 * time.Millisecond))
			// The client's end selects its packets, not the SYN-ACK that
			// arrives addressed to the masquerading router.
			want = slices.DeleteFunc(dnatConnection(slices.Contains(lines, natSvcSepA)), func(s string) bool { return s == rawPolicy })
			want = want[:len(want)-2]
			diffLines(t, "rules hit from the widened end", lines, want)

			// The client's address without a port selects its packets
			// whatever their ports, which the nft marker's skip by port
			// must not hide.
			byAddr := widened
			byAddr.Ends = append(slices.Clone(widened.Ends), netip.AddrPortFrom(netip.MustParseAddr(clientIP.String()), 0))
			if err := tr.Widen(byAddr); err != nil {
				t.Fatalf("Widen with an address: %v", err)
			}
			c.mu.Lock()
			c.hops = nil
			c.mu.Unlock()
			connectAndReset(t, l, freePort())
			lines = iptables(c.settle(200 * time.Millisecond))
			want = slices.DeleteFunc(dnatConnection(slices.Contains(lines, natSvcSepA)), func(s string) bool { return s == rawPolicy })
			want = want[:len(want)-2]
			diffLines(t, "rules hit from the widened address", lines, want)

			if losses, err := tr.Close(); err != nil || len(losses) != 0 {
				t.Fatalf("Close = %v, %v", losses, err)
			}
			if after := netfilterState(t, l.router); after != before {
				t.Errorf("Close left the router changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if err := tr.Widen(widened); err == nil {
				t.Error("Widen after Close: no error")
			}
		})
	}
}

func TestICMPByAddress(t *testing.T) {
	for _, backend := range []Backend{Legacy, Nft} {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			loadRules(t, l.router, backend, true)
			var c collector
			tr := arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.ICMP, Addrs: addrs(server1IP)}}, c.emit)
			l.client.mustRun(t, "", "ping", "-c1", "-W2", server1IP)
			hops := c.settle(200 * time.Millisecond)
			if _, err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			request := []string{rawPolicy, natPrerouting, natServicesEnd, natPreroutingEnd, filterForward, kubeForwardEnd, forwardAccept,
				natPostrouting, natPostNotMarked, natPostEnd}
			reply := []string{rawPolicy, filterForward, kubeForwardCT}
			diffLines(t, "rules hit by the echo and its reply", hopLines(hops), slices.Concat(request, reply))
			if len(hops) > 0 && (hops[0].Packet.ICMPType != 8 || hops[len(hops)-1].Packet.ICMPType != 0) {
				t.Errorf("ICMP types %d … %d, want an echo request then a reply", hops[0].Packet.ICMPType, hops[len(hops)-1].Packet.ICMPType)
			}
		})
	}
}

// synAndRest splits hops into those of the client's SYN and the others.
func synAndRest(hops []trace.Hop) (syn, rest []trace.Hop) {
	for _, h := range hops {
		if h.Packet.TCPFlags == "S" && h.Packet.Src.String() == clientIP.String() {
			syn = append(syn, h)
		} else {
			rest = append(rest, h)
		}
	}
	return syn, rest
}

func TestDropAndReject(t *testing.T) {
	for _, backend := range []Backend{Legacy, Nft} {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			loadRules(t, l.router, backend, true)
			toDrop := []string{rawPolicy, natPrerouting, natServicesEnd, natPreroutingEnd, filterForward, kubeForwardEnd}

			port := freePort()
			var dropped collector
			tr := arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(port)}}}, dropped.emit)
			if _, err := l.dial(t, port, server1IP+":9", 300*time.Millisecond); err == nil {
				t.Fatal("connected through a DROP rule")
			}
			hops := dropped.settle(200 * time.Millisecond)
			if _, err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			// The SYN stopped at the DROP rule: nothing came after it.
			diffLines(t, "rules hit by the dropped SYN", hopLines(hops), append(toDrop, forwardDrop))

			port = freePort()
			var rejected collector
			tr = arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(port)}}}, rejected.emit)
			_, err := l.dial(t, port, server1IP+":7", time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial through REJECT: %v, want connection refused", err)
			}
			hops = rejected.settle(200 * time.Millisecond)
			if _, err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			// The SYN stopped at the REJECT rule; the router's RST, which
			// the rule sent back, is the only other packet traced.
			syn, rest := synAndRest(hops)
			diffLines(t, "rules hit by the rejected SYN", hopLines(syn), append(toDrop, forwardReject))
			if len(rest) == 0 {
				t.Error("the router's RST was not traced")
			}
			for _, h := range rest {
				if h.Packet.SrcPort != 7 || !strings.Contains(h.Packet.TCPFlags, "R") {
					t.Errorf("hop of another packet than the router's RST: %s %+v", hopLine(h), h.Packet)
				}
			}
		})
	}
}

func TestNativeNftTable(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	l.router.mustRun(t, `table inet fw {
	chain forward_filter {
		type filter hook forward priority 0; policy accept;
		tcp dport 9 counter drop comment "no discard"
	}
	chain input_filter {
		type filter hook input priority 0; policy drop;
	}
}
`, "nft", "-f", "-")
	before := netfilterState(t, l.router)
	port := freePort()
	var c collector
	tr := arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(port)}}}, c.emit)
	l.dial(t, port, server1IP+":9", 300*time.Millisecond)
	hops := c.settle(200 * time.Millisecond)
	if _, err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	diffLines(t, "rules hit", hopLines(hops), []string{`fw forward_filter rule #1 drop | tcp dport 9 counter drop comment "no discard"`})
	if len(hops) == 1 && (hops[0].Rule.Family != "inet" || hops[0].Rule.Handle == 0) {
		t.Errorf("rule %+v: want family inet and a handle", hops[0].Rule)
	}

	var policy collector
	tr = arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.ICMP, Addrs: addrs("10.1.0.1")}}, policy.emit)
	if _, err := l.client.run("", "ping", "-c1", "-W1", "10.1.0.1"); err == nil {
		t.Error("the router answered a ping its input policy drops")
	}
	hops = policy.settle(200 * time.Millisecond)
	if _, err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	diffLines(t, "rules hit by the ping", hopLines(hops), []string{"fw input_filter policy #0 drop | policy drop"})
	if after := netfilterState(t, l.router); after != before {
		t.Errorf("Close left the router changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestBothBackends(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	loadRules(t, l.router, Legacy, false)
	l.router.mustRun(t, "table inet fw {\n\tchain forward_filter {\n\t\ttype filter hook forward priority 10; policy accept;\n\t\ttcp dport 8080 accept\n\t}\n}\n", "nft", "-f", "-")
	l.listen(t, 8080)
	before := netfilterState(t, l.router)
	port := freePort()
	var c collector
	tr := arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(port)}}}, c.emit)
	if got := tr.Backends(); !slices.Equal(got, []Backend{Legacy, Nft}) {
		t.Fatalf("backends %v, want both", got)
	}
	if !tr.armed.nft || tr.armed.legacy {
		t.Fatalf("armed %+v, want the nft marker only", tr.armed)
	}
	connectAndReset(t, l, port)
	hops := c.settle(200 * time.Millisecond)
	if _, err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	var legacy, nft []trace.Hop
	for _, h := range hops {
		switch {
		case h.Source == SourceNflog && h.Rule.Backend == "legacy":
			legacy = append(legacy, h)
		case h.Source == SourceNftrace && h.Rule.Backend == "nft":
			nft = append(nft, h)
		default:
			t.Errorf("hop from %s with backend %s", h.Source, h.Rule.Backend)
		}
	}
	withoutRaw := slices.DeleteFunc(dnatConnection(slices.Contains(hopLines(legacy), natSvcSepA)), func(s string) bool { return s == rawPolicy })
	diffLines(t, "legacy rules hit", hopLines(legacy), withoutRaw)
	accept := "fw forward_filter rule #1 accept | tcp dport 8080 accept"
	diffLines(t, "nft rules hit", hopLines(nft), []string{accept, "fw forward_filter policy #0 accept | policy accept", accept, accept})
	if after := netfilterState(t, l.router); after != before {
		t.Errorf("Close left the router changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestNoRulesNoTrace arms in a namespace without rules: nothing to trace,
// nothing armed, nothing changed.
func TestNoRulesNoTrace(t *testing.T) {
	t.Parallel()
	n := newTestNetns(t)
	before := netfilterState(t, n)
	tr := arm(t, n, Options{Match: trace.Match{Proto: trace.UDP, Ports: []uint16{53}}}, func(trace.Hop) {})
	if len(tr.Backends()) != 0 || tr.armed.legacy || tr.armed.nft || tr.bound {
		t.Errorf("backends %v, armed %+v, nf_log bound %v in an empty namespace", tr.Backends(), tr.armed, tr.bound)
	}
	if _, err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if after := netfilterState(t, n); after != before {
		t.Errorf("state changed:\n%s\n%s", before, after)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, opts := range []Options{
		{Match: trace.Match{Proto: trace.TCP}},
		{Match: trace.Match{Proto: trace.ICMP}},
		{Match: trace.Match{Proto: "sctp", Ports: []uint16{1}}},
		{Match: trace.Match{Proto: trace.ICMP, Addrs: addrs("fd00::1")}},
		{Match: trace.Match{Proto: trace.UDP, Ports: []uint16{53}}, Backends: []Backend{"ebpf"}},
	} {
		if _, err := New(opts); err == nil {
			t.Errorf("New(%+v) succeeded", opts)
		}
	}
}

// sendUDP sends n datagrams from the client to the server, from an
// unconnected socket: the server's port unreachable errors do not stop it.
func sendUDP(t *testing.T, l *lab, dstPort, n int) {
	t.Helper()
	dst := &net.UDPAddr{IP: net.ParseIP(server1IP), Port: dstPort}
	l.client.do(t, func() error {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: clientIP})
		if err != nil {
			return err
		}
		defer conn.Close()
		for range n {
			if _, err := conn.WriteToUDP([]byte("x"), dst); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestSocketOverrunsAreReported stalls the consumer of the events while a
// burst is traced through a tiny socket buffer: the kernel drops events, and
// Close must say how many.
func TestSocketOverrunsAreReported(t *testing.T) {
	for _, backend := range []Backend{Legacy, Nft} {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			loadRules(t, l.router, backend, true)
			port := freePort()
			release := make(chan struct{})
			var c collector
			stalled := func(h trace.Hop) {
				<-release
				c.emit(h)
			}
			tr := arm(t, l.router, Options{Node: "router", Match: trace.Match{Proto: trace.UDP, Ports: []uint16{uint16(port)}},
				Rate: MaxRate, Burst: 10000, ReadBuffer: 4096}, stalled)
			sendUDP(t, l, port, 200)
			time.Sleep(200 * time.Millisecond)
			close(release)
			c.settle(100 * time.Millisecond)
			// One more datagram, read in time: for nflog, its sequence
			// numbers show how many events the overruns cost.
			sendUDP(t, l, port, 1)
			c.settle(100 * time.Millisecond)
			losses, err := tr.Close()
			if err != nil {
				t.Fatal(err)
			}
			source := map[Backend]string{Legacy: SourceNflog, Nft: SourceNftrace}[backend]
			if len(losses) != 1 || losses[0].Source != source || losses[0].Node != "router" || losses[0].Count < 1 ||
				!strings.Contains(losses[0].Detail, "ENOBUFS") {
				t.Fatalf("losses %+v, want one from %s counting the overruns", losses, source)
			}
			// The first datagram meets 10 rules, the others 5 (conntrack
			// spares them the nat table): about 1010 events, most lost.
			delivered := c.len()
			if delivered > 500 || delivered+losses[0].Count > 1100 {
				t.Errorf("%d hops delivered and %d lost out of about 1010", delivered, losses[0].Count)
			}
			if backend == Legacy && losses[0].Count < 500 {
				t.Errorf("nflog counted %d lost events, want the gap in its sequence numbers", losses[0].Count)
			}
			t.Logf("%d hops delivered; %+v", c.len(), losses[0])
		})
	}
}
