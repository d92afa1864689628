package engine

import (
	"context"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
)

// natOutgoingRules are Calico's forward rules and its natOutgoing: a pod's
// packet to an address outside the pools is masqueraded as kube-proxy and
// Calico do, with a random source port.
const natOutgoingRules = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:cali-nat-outgoing - [0:0]
-A POSTROUTING -m comment --comment "cali:O3lYWMrLQYEMJtB5" -j cali-nat-outgoing
-A cali-nat-outgoing -s 172.16.0.0/16 ! -d 172.16.0.0/16 -m comment --comment "cali:flqWnvo8yq4ULQLa" -j MASQUERADE --random-fully
COMMIT
` + calicoForward

// nodePortRules are Calico's forward rules and kube-proxy's for the node
// port 30053/udp of the service default/echo, whose endpoint, the server
// pod, listens on 8053: the DNAT to it, and the MASQUERADE with a random
// source port of traffic from outside the service.
const nodePortRules = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-EXT-ECHO - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ECHO - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ECHO - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-EXT-ECHO -m comment --comment "masquerade traffic for default/echo external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-ECHO -j KUBE-SVC-ECHO
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p udp -m comment --comment "default/echo" -m udp --dport 30053 -j KUBE-EXT-ECHO
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-ECHO -p udp -m comment --comment "default/echo" -m udp -j DNAT --to-destination 172.16.1.11:8053
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-ECHO -m comment --comment "default/echo -> 172.16.1.11:8053" -j KUBE-SEP-ECHO
COMMIT
` + calicoForward

// natTable is table with the source port that a SNAT gave the flow, which
// is random, written NATPORT.
func natTable(t *testing.T, p trace.Path) string {
	t.Helper()
	out := table(t, p)
	for _, h := range p.Hops {
		if h.NAT == nil || h.NAT.Type != "SNAT" {
			continue
		}
		if port := h.NAT.To.Port(); port == p.Flow.SrcPort {
			t.Fatalf("the SNAT kept the port %d: the test cannot tell it from the client's", port)
		} else {
			out = regexp.MustCompile(`:`+strconv.Itoa(int(port))+`\b`).ReplaceAllString(out, ":NATPORT")
		}
	}
	return out
}

// masqueradedPath is a connection from the client pod to a server outside
// the cluster: the node masquerades it with a random source port on its
// way out of eth0, and undoes that on the SYN-ACK, which is seen from the
// moment it reaches eth0.
const masqueradedPath = clientARP + `[k8s-w1] calia1b2c3d4e5f in → tcp 172.16.1.10:PORT > 203.0.113.10:80 S ttl 64
[k8s-w1] nat PREROUTING policy ACCEPT
[k8s-w1] route default via 192.168.10.1 dev eth0 (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #1 "from workload" ACCEPT
[k8s-w1] nat POSTROUTING #1 → cali-nat-outgoing #1 MASQUERADE 172.16.1.10:PORT → 192.168.10.101:NATPORT
[k8s-w1] eth0 out → ARP who-has 192.168.10.1 tell 192.168.10.101
[k8s-w1] eth0 in → ARP 192.168.10.1 is-at 02:00:c0:a8:0a:01
[k8s-w1] eth0 out → tcp 192.168.10.101:NATPORT > 203.0.113.10:80 S ttl 63
reply
[k8s-w1] eth0 in → tcp 203.0.113.10:80 > 192.168.10.101:NATPORT S. ttl 64
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #2 "to workload" ACCEPT
[k8s-w1] pod 172.16.1.10 eth0 in → tcp 203.0.113.10:80 > 172.16.1.10:PORT S. ttl 63
verdict: replied: SYN-ACK
`

// TestTraceMasquerade probes a server outside the cluster through the
// node's MASQUERADE --random-fully, on each iptables backend: the packets
// after the rewrite, which no longer carry the probe's port, are captured
// on eth0 both ways, and the SYN-ACK's rules are traced before the rewrite
// is undone.
func TestTraceMasquerade(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			n := enginetest.NewNode(t, enginetest.NodeName, enginetest.NodeIP)
			outside := enginetest.ConnectOutside(t, n)
			n.AddPod(t, enginetest.ClientIP, enginetest.ClientVeth)
			outside.Listen(t, 80)
			n.Netns.RunInput(t, natOutgoingRules, "iptables-"+backend+"-restore")
			before := enginetest.NetfilterState(t, n.Netns)

			req := Request{Node: n.Name, Netns: n.Netns.Path(), Flow: tcpFlow(enginetest.ClientIP, enginetest.OutsideIP+":80"),
				Timeout: 5 * time.Second}
			path, err := Trace(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := natTable(t, path); got != masqueradedPath {
				t.Errorf("table:\n%s\nwant:\n%s", got, masqueradedPath)
			}
			if after := enginetest.NetfilterState(t, n.Netns); after != before {
				t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}

// targetPortPath is a live connection from the client to the ClusterIP,
// whose endpoint listens on 8080: the DNAT changes the port the trace
// waited on, and the packets to and from 8080 are seen all the same. The
// ARP caches hold what an earlier connection resolved.
var targetPortPath = `[k8s-w1] calia1b2c3d4e5f in → tcp 172.16.1.10:PORT > 10.96.0.100:80 S ttl 64
[k8s-w1] nat PREROUTING #1 "kubernetes service portals" → KUBE-SERVICES #1 "default/web cluster IP" → KUBE-SVC-2VLBFIULZRMG6NS3 #2 "default/web -> 172.16.1.11:8080" → KUBE-SEP-TOJ6KBVFMXNEZ7KU #2 "default/web" DNAT 10.96.0.100:80 → 172.16.1.11:8080
[k8s-w1] route 172.16.1.11 dev cali0f1e2d3c4b5 scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #3 "from workload" ACCEPT
[k8s-w1] nat POSTROUTING #1 "kubernetes postrouting rules" → KUBE-POSTROUTING #1 RETURN → POSTROUTING policy ACCEPT
[k8s-w1] pod 172.16.1.11 eth0 in → tcp 172.16.1.10:PORT > 172.16.1.11:8080 S ttl 63
[k8s-w1] pod 172.16.1.11 eth0 → delivered
reply
[k8s-w1] cali0f1e2d3c4b5 in → tcp 172.16.1.11:8080 > 172.16.1.10:PORT S. ttl 64
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #3 "from workload" ACCEPT
[k8s-w1] pod 172.16.1.10 eth0 in → tcp 10.96.0.100:80 > 172.16.1.10:PORT S. ttl 63
`

// TestTraceLiveToTargetPort traces live traffic to a ClusterIP whose
// service port 80 is DNATed to the endpoint's 8080, on each backend. When
// the service was used before, the session learns its endpoint from the
// connection that conntrack still holds when it arms. When it was not (the
// client only talked to the pod directly, which warms the neighbour caches
// but teaches nothing), the trace arms with the endpoint that the node's
// rules DNAT the service to, so the first packet to 8080 is seen too.
func TestTraceLiveToTargetPort(t *testing.T) {
	rules := strings.ReplaceAll(enginetest.Rules, "172.16.1.11:80", "172.16.1.11:8080")
	for _, backend := range backends {
		for earlier, dial := range map[string]string{"used before": enginetest.ServiceAddr, "first use": "172.16.1.11:8080"} {
			t.Run(backend+"/"+earlier, func(t *testing.T) {
				t.Parallel()
				n := enginetest.NewNode(t, enginetest.NodeName, enginetest.NodeIP)
				enginetest.Connect(t, n, nil)
				c := &enginetest.Cluster{Node: n, Client: n.AddPod(t, enginetest.ClientIP, enginetest.ClientVeth),
					Server: n.AddPod(t, enginetest.ServerIP, enginetest.ServerVeth)}
				c.Server.Listen(t, 8080)
				n.Netns.RunInput(t, rules, "iptables-"+backend+"-restore")
				if err := c.Client.Dial(context.Background(), dial); err != nil {
					t.Fatal(err)
				}
				before := enginetest.NetfilterState(t, n.Netns)

				path := traceLive(t, c, tcpFlow(enginetest.ClientIP, enginetest.ServiceAddr), enginetest.ServiceAddr)
				checkTable(t, path, targetPortPath+"verdict: replied: the reply reached 172.16.1.10\n")
				if after := enginetest.NetfilterState(t, n.Netns); after != before {
					t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
				}
			})
		}
	}
}

// nodePortRequest is the request of a UDP probe from the client to the
// node port of its own node: kube-proxy's rules DNAT it to the server pod
// and masquerade it with a random source port.
const nodePortRequest = clientARP + `[k8s-w1] calia1b2c3d4e5f in → udp 172.16.1.10:PORT > 192.168.10.101:30053 ttl 64
[k8s-w1] nat PREROUTING #1 "kubernetes service portals" → KUBE-SERVICES #1 "kubernetes service nodeports" → KUBE-NODEPORTS #1 "default/echo" → KUBE-EXT-ECHO #1 "masquerade traffic for default/echo external destinations" → KUBE-MARK-MASQ #1 MARK → KUBE-MARK-MASQ return → KUBE-EXT-ECHO #2 → KUBE-SVC-ECHO #1 "default/echo -> 172.16.1.11:8053" → KUBE-SEP-ECHO #1 "default/echo" DNAT 192.168.10.101:30053 → 172.16.1.11:8053
[k8s-w1] route 172.16.1.11 dev cali0f1e2d3c4b5 scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #1 "from workload" ACCEPT
[k8s-w1] nat POSTROUTING #1 "kubernetes postrouting rules" → KUBE-POSTROUTING #2 MARK → KUBE-POSTROUTING #3 "kubernetes service traffic requiring SNAT" MASQUERADE 172.16.1.10:PORT → 192.168.10.101:NATPORT
[k8s-w1] pod 172.16.1.11 eth0 in → ARP who-has 172.16.1.11 tell 192.168.10.101
[k8s-w1] cali0f1e2d3c4b5 in → ARP 172.16.1.11 is-at 0a:58:ac:10:01:0b
`

// nodePortPostNAT is the request as the server's veth sees it after both
// rewrites, delivered: the trace armed with the endpoint that the node's
// rules DNAT the node port to, so it selects the rewritten request although
// its new source port is random.
const nodePortPostNAT = "[k8s-w1] pod 172.16.1.11 eth0 in → udp 192.168.10.101:NATPORT > 172.16.1.11:8053 ttl 63\n" +
	"[k8s-w1] pod 172.16.1.11 eth0 → delivered\n"

// nodePortReply is the server's answer, a second later: by then the
// session follows the new port, and the reply is seen from the server's
// veth through the rules and the undone rewrites to the client.
const nodePortReply = `reply
[k8s-w1] cali0f1e2d3c4b5 in → ARP who-has 169.254.1.1 tell 172.16.1.11
[k8s-w1] pod 172.16.1.11 eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w1] cali0f1e2d3c4b5 in → udp 172.16.1.11:8053 > 192.168.10.101:NATPORT ttl 64
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #1 "from workload" ACCEPT
[k8s-w1] pod 172.16.1.10 eth0 in → udp 192.168.10.101:30053 > 172.16.1.10:PORT ttl 63
verdict: replied: UDP reply of 22 bytes
`

// TestTraceWidensAcrossNodePort probes the node port of the client's own
// node over UDP, on each backend. The DNAT and the MASQUERADE rewrite both
// ends of the request: the trace, armed with the endpoint the node's rules
// DNAT to, selects it after the rewrites too, and the session widens its
// sources with the new source port as conntrack reports it, so that the
// server, which answers a second later, is traced back through the
// rewrites.
func TestTraceWidensAcrossNodePort(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			n := enginetest.NewNode(t, enginetest.NodeName, enginetest.NodeIP)
			enginetest.Connect(t, n, nil)
			n.AddPod(t, enginetest.ClientIP, enginetest.ClientVeth)
			server := n.AddPod(t, enginetest.ServerIP, enginetest.ServerVeth)
			server.EchoUDP(t, 8053, time.Second)
			n.Netns.RunInput(t, nodePortRules, "iptables-"+backend+"-restore")
			before := enginetest.NetfilterState(t, n.Netns)

			flow := trace.Flow{Proto: trace.UDP, Src: addr(enginetest.ClientIP), Dst: addr(enginetest.NodeIP), DstPort: 30053}
			path, err := Trace(context.Background(), Request{Node: n.Name, Netns: n.Netns.Path(), Flow: flow, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			// The trace armed with the endpoint that the node's rules DNAT
			// the node port to: the rewritten request is seen too.
			if got, want := natTable(t, path), nodePortRequest+nodePortPostNAT+nodePortReply; got != want {
				t.Errorf("table:\n%s\nwant:\n%s", got, want)
			}
			if len(path.Lost) != 0 {
				t.Errorf("losses: %+v", path.Lost)
			}
			if after := enginetest.NetfilterState(t, n.Netns); after != before {
				t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}

// TestWidened checks which rewrites widen a match, and with what.
func TestWidened(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, service, node, endpoint := ap("172.16.1.10:40001"), ap("10.96.0.100:80"), ap("192.168.10.101:61234"), ap("172.16.2.7:8080")
	nat := func(typ string, original, reply trace.Tuple) *trace.NAT {
		return &trace.NAT{Type: typ, Original: original, Reply: reply}
	}
	tcp := func(src, dst netip.AddrPort) trace.Tuple { return trace.Tuple{Proto: trace.TCP, Src: src, Dst: dst} }
	probe := trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}
	liveMatch := trace.Match{Proto: trace.TCP, Ports: []uint16{80}}
	icmp := trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{client.Addr(), service.Addr()}}
	for _, tc := range []struct {
		name  string
		m     trace.Match
		n     *trace.NAT
		added []netip.AddrPort
		addrs []netip.Addr
	}{
		{"DNAT keeps the probe's port", probe, nat("DNAT", tcp(client, service), tcp(endpoint, client)), nil, nil},
		{"MASQUERADE changes it", probe, nat("SNAT", tcp(client, endpoint), tcp(endpoint, node)), []netip.AddrPort{node}, nil},
		{"both: the new source is the connection's", probe, nat("DNAT", tcp(client, service), tcp(endpoint, node)), []netip.AddrPort{node}, nil},
		{"live, to another port", liveMatch, nat("DNAT", tcp(client, service), tcp(endpoint, client)), []netip.AddrPort{endpoint}, nil},
		{"ICMP DNAT and SNAT", icmp, &trace.NAT{Type: "DNAT",
			Original: trace.Tuple{Proto: trace.ICMP, Src: client, Dst: ap("10.96.0.100:0")},
			Reply:    trace.Tuple{Proto: trace.ICMP, Src: ap("172.16.2.7:0"), Dst: node}}, nil, []netip.Addr{endpoint.Addr()}},
	} {
		m, changed := widened(tc.m, tc.n)
		wantEnds := append(append([]netip.AddrPort(nil), tc.m.Ends...), tc.added...)
		wantAddrs := append(append([]netip.Addr(nil), tc.m.Addrs...), tc.addrs...)
		if changed != (tc.added != nil || tc.addrs != nil) || !sameMatch(m, trace.Match{Proto: tc.m.Proto, Ports: tc.m.Ports, Ends: wantEnds, Addrs: wantAddrs}) {
			t.Errorf("%s: widened to %+v (changed %v), want ends %v, addresses %v", tc.name, m, changed, wantEnds, wantAddrs)
		}
		if again, changed := widened(m, tc.n); changed || !sameMatch(again, m) {
			t.Errorf("%s: widened twice to %+v", tc.name, again)
		}
	}
	live := trace.Flow{Proto: trace.TCP, Src: client.Addr(), Dst: service.Addr(), DstPort: 80}
	toService := nat("DNAT", tcp(ap("172.16.1.12:33333"), service), tcp(endpoint, ap("172.16.1.12:33333")))
	if !teaches(live, toService) || teaches(trace.Flow{}, toService) {
		t.Errorf("a DNAT to the live flow's destination does not teach its endpoint")
	}
	if m, changed := learned(liveMatch, toService); !changed || !sameMatch(m, trace.Match{Proto: trace.TCP, Ports: []uint16{80}, Ends: []netip.AddrPort{endpoint}}) {
		t.Errorf("learned %+v (changed %v), want the endpoint as an end", m, changed)
	}
	if _, changed := learned(trace.Match{Proto: trace.TCP, Ports: []uint16{8080}}, toService); changed {
		t.Errorf("learned an endpoint whose port the match selects")
	}
	toOther := nat("DNAT", tcp(ap("172.16.1.12:33333"), ap("10.96.0.101:80")), tcp(endpoint, ap("172.16.1.12:33333")))
	if teaches(live, toOther) {
		t.Errorf("a DNAT to another destination teaches the live flow")
	}
	withPort := live
	withPort.SrcPort = 40001
	if teaches(withPort, toService) {
		t.Errorf("a DNAT of another connection teaches a flow whose port is known")
	}
	flow := trace.Flow{Proto: trace.TCP, Src: client.Addr(), SrcPort: client.Port(), Dst: service.Addr(), DstPort: 80}
	other := nat("DNAT", tcp(ap("172.16.1.12:40001"), service), tcp(endpoint, ap("172.16.1.12:40001")))
	for _, tc := range []struct {
		flow trace.Flow
		n    *trace.NAT
		want bool
	}{
		{flow, nat("DNAT", tcp(client, service), tcp(endpoint, client)), true},
		{flow, nat("DNAT", tcp(ap("192.168.10.101:40001"), service), tcp(endpoint, node)), true}, // masqueraded before
		{flow, nat("DNAT", trace.Tuple{Proto: trace.UDP, Src: client, Dst: service}, trace.Tuple{Proto: trace.UDP, Src: endpoint, Dst: client}), false},
		{flow, other, true}, // another client, the same port: the correlator tells them apart
		{flow, nat("DNAT", tcp(ap("172.16.1.12:40002"), service), tcp(endpoint, ap("172.16.1.12:40002"))), false},
		{flow, nat("DNAT", tcp(ap("172.16.1.10:40002"), service), tcp(endpoint, ap("172.16.1.10:40002"))), false},
		{trace.Flow{Proto: trace.TCP, Src: client.Addr(), Dst: service.Addr(), DstPort: 80}, nat("DNAT", tcp(ap("172.16.1.10:40002"), service), tcp(endpoint, ap("172.16.1.10:40002"))), true},
		{trace.Flow{Proto: trace.TCP, Src: client.Addr(), Dst: service.Addr(), DstPort: 80}, other, false},
		{trace.Flow{}, other, true},
	} {
		if got := follows(tc.flow, tc.n); got != tc.want {
			t.Errorf("follows(%v, %v) = %v, want %v", tc.flow, tc.n.Original, got, tc.want)
		}
	}
}
