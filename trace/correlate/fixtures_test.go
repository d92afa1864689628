package correlate

import (
	"net/netip"
	"strings"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// The fixtures are the seed's scenarios as the sources report them: hops of
// trace/netfilter (legacy TRACE over nflog, nf_tables trace), capture/ (with
// capture/decode's packets, ARP and notes), trace/conntrack and trace/route,
// in the order the sources would hand them over, which is not the packet's.
// Times are microseconds after t0; captures carry kernel times, rule hops
// the later time the tracer read them.

var t0 = time.Date(2026, 5, 14, 10, 0, 0, 0, time.UTC)

func us(n int) time.Time { return t0.Add(time.Duration(n) * time.Microsecond) }

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func addr(s string) netip.Addr   { return netip.MustParseAddr(s) }

// Node names and addresses of the lab.
const (
	w1      = "k8s-w1"
	w2      = "k8s-w2"
	outside = "outside"
	w1IP    = "192.168.10.101"
	w2IP    = "192.168.10.102"
	// Pod netns labels and their host veths (cali + sha1 of "ns.pod").
	clientNetns = "default/client"
	clientVeth  = "calia7a3e029a7b"
	serverNetns = "default/server"
	serverVeth  = "cali7715d358f22"
	nginxPod    = "default/nginx-test-6d4cf56db6-2x8kq"
	nginxVeth   = "cali12c5e3f9a8b"
	nodePortPod = "default/nginx-nodeport-test-866cfc566c-pf7mm"
	nodePortVet = "cali3f2a1b4c5d6"
	proxyMAC    = "ee:ee:ee:ee:ee:ee"
)

// tcp is a TCP packet "src:port" > "dst:port" with tcpdump's flags.
func tcp(src, dst, flags string, ttl uint8) *trace.Packet {
	s, d := ap(src), ap(dst)
	return &trace.Packet{Proto: trace.TCP, Src: s.Addr(), SrcPort: s.Port(), Dst: d.Addr(), DstPort: d.Port(),
		Length: 60, TTL: ttl, TCPFlags: flags}
}

// echo is an ICMP echo request (typ 8) or reply (typ 0).
func echo(src, dst string, typ uint8, id uint16, ttl uint8) *trace.Packet {
	return &trace.Packet{Proto: trace.ICMP, Src: addr(src), Dst: addr(dst), Length: 84, TTL: ttl,
		ICMPType: typ, ICMPID: id, ICMPSeq: 1}
}

// ipip wraps p in an IPIP outer header, as capture/decode reports it.
func ipip(p *trace.Packet, src, dst string) *trace.Packet {
	w := *p
	w.Outer = &trace.Tunnel{Type: "ipip", Src: addr(src), Dst: addr(dst)}
	return &w
}

// seen is a capture of p: netns is "" for the node's own.
func seen(node, netns, iface string, at int, p *trace.Packet) trace.Hop {
	return trace.Hop{Time: us(at), Node: node, Netns: netns, Kind: trace.HopInterface, Iface: iface,
		Source: "capture", Packet: p}
}

// arpSeen is a capture of an ARP message; a reply from Calico's MAC is a
// proxy reply.
func arpSeen(node, netns, iface string, at int, op, senderIP, senderMAC, targetIP, targetMAC string) trace.Hop {
	h := trace.Hop{Time: us(at), Node: node, Netns: netns, Kind: trace.HopARP, Iface: iface, Source: "capture",
		ARP: &trace.ARP{Op: op, SenderIP: addr(senderIP), SenderMAC: senderMAC, TargetIP: addr(targetIP), TargetMAC: targetMAC}}
	if op == "reply" && senderMAC == proxyMAC {
		h.ARP.Proxy, h.Note = true, "proxy ARP"
	}
	return h
}

// legacy is a rule hop of the legacy tracer: text as iptables-legacy-save
// prints it ("" for a chain's implicit return), the verdict as the ruleset
// reader derives it.
func legacy(node string, at int, p *trace.Packet, table, chain string, number int, text, in, out string) trace.Hop {
	r := &trace.Rule{Backend: "legacy", Family: "ip", Table: table, Chain: chain, Type: "rule", Number: number,
		Text: text, InIface: in, OutIface: out}
	switch {
	case strings.HasPrefix(text, ":"):
		r.Type, r.Number = "policy", 0
		r.Verdict = strings.ToLower(strings.Fields(text)[1])
	case text == "":
		r.Type, r.Number, r.Verdict = "return", 0, "return"
	default:
		r.Verdict = verdictOf(text)
	}
	pkt := *p
	iface := in
	if iface == "" {
		iface = out
	}
	return trace.Hop{Time: us(at), Node: node, Kind: trace.HopRule, Iface: iface, Source: "nflog", Packet: &pkt, Rule: r}
}

// nft is the same rule reported by the nf_tables tracer for iptables-nft,
// with its handle and trace id.
func nft(node string, at int, p *trace.Packet, table, chain string, number int, handle uint64, text, in, out string) trace.Hop {
	h := legacy(node, at, p, table, chain, number, text, in, out)
	h.Source, h.Rule.Backend, h.Rule.Handle, h.Note = "nftrace", "nft", handle, "nft trace id 5e2a91c0"
	if h.Rule.Type == "return" {
		h.Rule.Handle = 0
	}
	return h
}

// verdictOf is what trace/netfilter/ruleset derives from a rule's target.
func verdictOf(text string) string {
	f := strings.Fields(text)
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "-g":
			return "goto " + f[i+1]
		case "-j":
			switch t := f[i+1]; {
			case strings.HasPrefix(t, "KUBE-"), strings.HasPrefix(t, "cali-"):
				return "jump " + t
			case t == "ACCEPT", t == "DNAT", t == "SNAT", t == "MASQUERADE":
				return "accept"
			case t == "DROP", t == "REJECT":
				return "drop"
			case t == "RETURN":
				return "return"
			}
			return "continue"
		}
	}
	return "continue"
}

// natSeen is a conntrack rewrite as trace/conntrack emits it.
func natSeen(node string, at int, typ, from, to string, orig, reply [2]string) trace.Hop {
	o := trace.Tuple{Proto: trace.TCP, Src: ap(orig[0]), Dst: ap(orig[1])}
	r := trace.Tuple{Proto: trace.TCP, Src: ap(reply[0]), Dst: ap(reply[1])}
	return trace.Hop{Time: us(at), Node: node, Kind: trace.HopNAT, Direction: trace.Request, Source: "conntrack",
		NAT: &trace.NAT{Type: typ, From: ap(from), To: ap(to), Original: o, Reply: r}}
}

// lookup is a route lookup as trace/route.LookupHop returns it, made at
// the end of the trace.
func lookup(node, iif string, at int, r trace.Route) trace.Hop {
	return trace.Hop{Time: us(at), Node: node, Kind: trace.HopRoute, Iface: iif, Source: "fib", Route: &r, Note: "lookup"}
}

var (
	routeToServerOnW1 = trace.Route{Dst: netip.MustParsePrefix("172.16.158.15/32"), Dev: serverVeth, Type: "unicast",
		Table: 254, Text: "172.16.158.15 dev cali7715d358f22 scope link"}
	routeToW2Block = trace.Route{Dst: netip.MustParsePrefix("172.16.184.0/24"), Gateway: addr(w2IP), Dev: "tunl0",
		Type: "unicast", Onlink: true, Table: 254, Text: "172.16.184.0/24 via 192.168.10.102 dev tunl0 onlink"}
	routeToW1Block = trace.Route{Dst: netip.MustParsePrefix("172.16.158.0/24"), Gateway: addr(w1IP), Dev: "tunl0",
		Type: "unicast", Onlink: true, Table: 254, Text: "172.16.158.0/24 via 192.168.10.101 dev tunl0 onlink"}
	routeDefault = trace.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: addr("192.168.10.1"), Dev: "eth0",
		Type: "unicast", Table: 254, Text: "default via 192.168.10.1 dev eth0"}
)

// Rules as iptables-save prints them on a Calico node with kube-proxy.
const (
	ruleServicePortals   = `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`
	rulePostrouting      = `-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`
	ruleNotMarked        = `-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`
	ruleForwardCalico    = `-A FORWARD -m comment --comment "cali:wUHhoiAYhph09Mso" -j cali-FORWARD`
	ruleCaliFromWl       = `-A cali-FORWARD -i cali+ -m comment --comment "cali:X3vB2lGcgnNKyP7V" -j cali-from-wl-dispatch`
	ruleCaliToWl         = `-A cali-FORWARD -o cali+ -m comment --comment "cali:UtJ9FnhBnFbyQMvU" -j cali-to-wl-dispatch`
	ruleCaliAcceptMarked = `-A cali-FORWARD -m comment --comment "cali:So_WxNFHXxKS2H5j" -m mark --mark 0x10000/0x10000 -j ACCEPT`
	ruleCaliTunnel       = `-A cali-FORWARD -i tunl0 -m comment --comment "cali:eb5n9-NvP9P2Q7tO" -j cali-to-wl-dispatch`
	ruleSvcNginx         = `-A KUBE-SERVICES -d 10.104.209.155/32 -p tcp -m comment --comment "default/nginx-test cluster IP" -m tcp --dport 80 -j KUBE-SVC-2VLBFIULZRMG6NS3`
	ruleSvcNginxEp2      = `-A KUBE-SVC-2VLBFIULZRMG6NS3 -m comment --comment "default/nginx-test -> 172.16.184.2:80" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-TOJ6KBVFMXNEZ7KU`
	ruleSepNginx         = `-A KUBE-SEP-TOJ6KBVFMXNEZ7KU -p tcp -m comment --comment "default/nginx-test" -m tcp -j DNAT --to-destination 172.16.184.2:80`
)

// calicoForward is the filter walk of a forwarded pod packet on a Calico
// node, from the pod's veth (or the tunnel) to the next one.
func calicoForward(node string, at int, p *trace.Packet, in, out string) []trace.Hop {
	dispatch := ruleCaliToWl
	switch {
	case strings.HasPrefix(in, "cali"):
		dispatch = ruleCaliFromWl
	case in == "tunl0":
		dispatch = ruleCaliTunnel
	}
	chainOf := strings.Fields(dispatch)[len(strings.Fields(dispatch))-1]
	number := map[string]int{ruleCaliFromWl: 3, ruleCaliToWl: 4, ruleCaliTunnel: 2}[dispatch]
	return []trace.Hop{
		legacy(node, at, p, "filter", "FORWARD", 1, ruleForwardCalico, in, out),
		legacy(node, at+4, p, "filter", "cali-FORWARD", number, dispatch, in, out),
		legacy(node, at+8, p, "filter", chainOf, 0, "", in, out),
		legacy(node, at+12, p, "filter", "cali-FORWARD", 5, ruleCaliAcceptMarked, in, out),
	}
}

// scenario is one fixture: the correlator's input and what the path must
// end in.
type scenario struct {
	name string
	in   Input
}

func scenarios() []scenario {
	return []scenario{
		sameNodeProxyARP(),
		clusterIPAcrossNodes(),
		podToPodIPIPSkewed(),
		nodePortViaOtherNode(),
		rejectNoEndpoints(),
		forwardPolicyDrop(),
		lostOnTheWay(),
	}
}

// sameNodeProxyARP is seed §5: ping from client to server, both on k8s-w1.
// The client resolves its gateway 169.254.1.1, which the host answers by
// proxy ARP from the veth; the host then resolves the server itself.
func sameNodeProxyARP() scenario {
	const id = 5423
	req := func(ttl uint8) *trace.Packet { return echo("172.16.158.16", "172.16.158.15", 8, id, ttl) }
	rep := func(ttl uint8) *trace.Packet { return echo("172.16.158.15", "172.16.158.16", 0, id, ttl) }
	hops := []trace.Hop{
		// Captures: the client's eth0, both host veths, the server's eth0.
		arpSeen(w1, clientNetns, "eth0", 0, "request", "172.16.158.16", "3a:1f:5c:20:8e:41", "169.254.1.1", ""),
		arpSeen(w1, "", clientVeth, 4, "request", "172.16.158.16", "3a:1f:5c:20:8e:41", "169.254.1.1", ""),
		arpSeen(w1, "", clientVeth, 11, "reply", "169.254.1.1", proxyMAC, "172.16.158.16", "3a:1f:5c:20:8e:41"),
		arpSeen(w1, clientNetns, "eth0", 14, "reply", "169.254.1.1", proxyMAC, "172.16.158.16", "3a:1f:5c:20:8e:41"),
		seen(w1, clientNetns, "eth0", 30, req(64)),
		seen(w1, "", clientVeth, 35, req(64)),
		arpSeen(w1, "", serverVeth, 60, "request", w1IP, proxyMAC, "172.16.158.15", ""),
		arpSeen(w1, "", serverVeth, 70, "reply", "172.16.158.15", "ea:4b:c4:79:ac:c1", w1IP, proxyMAC),
		seen(w1, "", serverVeth, 75, req(63)),
		seen(w1, serverNetns, "eth0", 78, req(63)),
		arpSeen(w1, serverNetns, "eth0", 200, "request", "172.16.158.15", "ea:4b:c4:79:ac:c1", "169.254.1.1", ""),
		arpSeen(w1, serverNetns, "eth0", 205, "reply", "169.254.1.1", proxyMAC, "172.16.158.15", "ea:4b:c4:79:ac:c1"),
		seen(w1, serverNetns, "eth0", 210, rep(64)),
		seen(w1, "", serverVeth, 215, rep(64)),
		seen(w1, "", clientVeth, 230, rep(63)),
		seen(w1, clientNetns, "eth0", 233, rep(63)),
		// Another ping of the client's, which the capture's address filter
		// also lets through.
		seen(w1, clientNetns, "eth0", 240, echo("172.16.158.16", "8.8.8.8", 8, 999, 64)),
	}
	// The legacy tracer, reading nflog well after the captures.
	hops = append(hops,
		legacy(w1, 300, req(64), "nat", "PREROUTING", 1, ruleServicePortals, clientVeth, ""),
		legacy(w1, 305, req(64), "nat", "KUBE-SERVICES", 0, "", clientVeth, ""),
		legacy(w1, 310, req(64), "nat", "PREROUTING", 0, ":PREROUTING ACCEPT", clientVeth, ""))
	hops = append(hops, calicoForward(w1, 320, req(63), clientVeth, serverVeth)...)
	hops = append(hops,
		legacy(w1, 345, req(63), "nat", "POSTROUTING", 1, rulePostrouting, "", serverVeth),
		legacy(w1, 348, req(63), "nat", "KUBE-POSTROUTING", 1, ruleNotMarked, "", serverVeth))
	hops = append(hops, calicoForward(w1, 600, rep(63), serverVeth, clientVeth)...)
	hops = append(hops, lookup(w1, clientVeth, 5000, routeToServerOnW1))
	return scenario{name: "same-node-proxy-arp", in: Input{
		Flow:   trace.Flow{Proto: trace.ICMP, Src: addr("172.16.158.16"), SrcPort: id, Dst: addr("172.16.158.15")},
		Hops:   hops,
		Nodes:  []string{w1, w2},
		Answer: &Answer{Result: trace.Replied, Reply: "echo reply"},
		Destinations: []Endpoint{{Name: serverNetns, Addr: addr("172.16.158.15"), Node: w1,
			Netns: serverNetns, HostVeth: serverVeth}},
	}}
}

// clusterIPAcrossNodes is seed §6b: curl from client on k8s-w1 to the
// nginx-test ClusterIP; kube-proxy's chains pick the endpoint on k8s-w2,
// and the packet crosses in IPIP. conntrack's timestamp of the DNAT is the
// kernel's, earlier than the rule hops the tracer read.
func clusterIPAcrossNodes() scenario {
	const client, vip, pod = "172.16.158.16:40001", "10.104.209.155:80", "172.16.184.2:80"
	syn := func(dst string, ttl uint8) *trace.Packet { return tcp(client, dst, "S", ttl) }
	synAck := func(src string, ttl uint8) *trace.Packet { return tcp(src, client, "S.", ttl) }
	hops := []trace.Hop{
		seen(w1, clientNetns, "eth0", 0, syn(vip, 64)),
		seen(w1, "", clientVeth, 5, syn(vip, 64)),
		natSeen(w1, 8, "DNAT", vip, pod, [2]string{client, vip}, [2]string{pod, client}),
		seen(w1, "", "tunl0", 40, syn(pod, 63)),
		seen(w1, "", "eth0", 60, ipip(syn(pod, 63), w1IP, w2IP)),
		seen(w2, "", "eth0", 150, ipip(syn(pod, 63), w1IP, w2IP)),
		seen(w2, "", "tunl0", 170, syn(pod, 63)),
		seen(w2, "", nginxVeth, 190, syn(pod, 62)),
		seen(w2, nginxPod, "eth0", 195, syn(pod, 62)),
		seen(w2, nginxPod, "eth0", 300, synAck(pod, 64)),
		seen(w2, "", nginxVeth, 305, synAck(pod, 64)),
		seen(w2, "", "tunl0", 330, synAck(pod, 63)),
		seen(w2, "", "eth0", 340, ipip(synAck(pod, 63), w2IP, w1IP)),
		seen(w1, "", "eth0", 420, ipip(synAck(pod, 63), w2IP, w1IP)),
		seen(w1, "", "tunl0", 430, synAck(pod, 63)),
		seen(w1, "", clientVeth, 450, synAck(vip, 62)),
		seen(w1, clientNetns, "eth0", 455, synAck(vip, 62)),
		// The handshake's ACK follows, another packet of the connection.
		seen(w1, clientNetns, "eth0", 470, tcp(client, vip, ".", 64)),
		seen(w1, "", clientVeth, 472, tcp(client, vip, ".", 64)),
	}
	hops = append(hops,
		legacy(w1, 500, syn(vip, 64), "nat", "PREROUTING", 1, ruleServicePortals, clientVeth, ""),
		legacy(w1, 504, syn(vip, 64), "nat", "KUBE-SERVICES", 3, ruleSvcNginx, clientVeth, ""),
		legacy(w1, 508, syn(vip, 64), "nat", "KUBE-SVC-2VLBFIULZRMG6NS3", 3, ruleSvcNginxEp2, clientVeth, ""),
		legacy(w1, 512, syn(vip, 64), "nat", "KUBE-SEP-TOJ6KBVFMXNEZ7KU", 2, ruleSepNginx, clientVeth, ""))
	hops = append(hops, calicoForward(w1, 520, syn(pod, 63), clientVeth, "tunl0")...)
	hops = append(hops,
		legacy(w1, 540, syn(pod, 63), "nat", "POSTROUTING", 1, rulePostrouting, "", "tunl0"),
		legacy(w1, 544, syn(pod, 63), "nat", "KUBE-POSTROUTING", 1, ruleNotMarked, "", "tunl0"),
		legacy(w1, 548, syn(pod, 63), "nat", "POSTROUTING", 0, ":POSTROUTING ACCEPT", "", "tunl0"))
	hops = append(hops, calicoForward(w2, 560, syn(pod, 62), "tunl0", nginxVeth)...)
	hops = append(hops, calicoForward(w2, 700, synAck(pod, 63), nginxVeth, "tunl0")...)
	hops = append(hops, calicoForward(w1, 800, synAck(pod, 62), "tunl0", clientVeth)...)
	hops = append(hops,
		lookup(w1, clientVeth, 9000, routeToW2Block),
		lookup(w2, "tunl0", 9100, trace.Route{Dst: netip.MustParsePrefix("172.16.184.2/32"), Dev: nginxVeth,
			Type: "unicast", Table: 254, Text: "172.16.184.2 dev cali12c5e3f9a8b scope link"}))
	return scenario{name: "clusterip-across-nodes", in: Input{
		Flow:       trace.Flow{Proto: trace.TCP, Src: ap(client).Addr(), SrcPort: 40001, Dst: ap(vip).Addr(), DstPort: 80},
		Translated: []trace.Flow{{Proto: trace.TCP, Src: ap(client).Addr(), SrcPort: 40001, Dst: ap(pod).Addr(), DstPort: 80}},
		Hops:       hops,
		Nodes:      []string{w1, w2},
		Answer:     &Answer{Result: trace.Replied, Reply: "SYN-ACK"},
		Destinations: []Endpoint{
			{Name: "default/nginx-test-6d4cf56db6-7wq9z", Addr: addr("172.16.158.3"), Node: w1, HostVeth: "cali0d1e2f3a4b5"},
			{Name: nginxPod, Addr: ap(pod).Addr(), Node: w2, Netns: nginxPod, HostVeth: nginxVeth},
			{Name: "default/nginx-test-6d4cf56db6-p5m2n", Addr: addr("172.16.184.3"), Node: w2, HostVeth: "cali9e8d7c6b5a4"},
		},
	}}
}

// podToPodIPIPSkewed is seed §6a: ping from client on k8s-w1 to server on
// k8s-w2 through the IPIP tunnel. k8s-w2's clock is 3ms behind k8s-w1's,
// and the iptables-nft rules are traced by nftrace.
func podToPodIPIPSkewed() scenario {
	const id, skew = 32298, -3000
	req := func(ttl uint8) *trace.Packet { return echo("172.16.158.7", "172.16.184.5", 8, id, ttl) }
	rep := func(ttl uint8) *trace.Packet { return echo("172.16.184.5", "172.16.158.7", 0, id, ttl) }
	fwd := func(node string, at int, p *trace.Packet, in, out string, handle uint64) trace.Hop {
		return nft(node, at, p, "filter", "FORWARD", 1, handle, ruleForwardCalico, in, out)
	}
	accept := func(node string, at int, p *trace.Packet, in, out string, handle uint64) trace.Hop {
		return nft(node, at, p, "filter", "cali-FORWARD", 5, handle, ruleCaliAcceptMarked, in, out)
	}
	hops := []trace.Hop{
		seen(w1, clientNetns, "eth0", 0, req(64)),
		seen(w1, "", clientVeth, 5, req(64)),
		seen(w1, "", "tunl0", 30, req(63)),
		seen(w1, "", "eth0", 45, ipip(req(63), w1IP, w2IP)),
		seen(w2, "", "eth0", 120+skew, ipip(req(63), w1IP, w2IP)),
		seen(w2, "", "tunl0", 135+skew, req(63)),
		seen(w2, "", serverVeth, 150+skew, req(62)),
		seen(w2, serverNetns, "eth0", 153+skew, req(62)),
		seen(w2, serverNetns, "eth0", 300+skew, rep(64)),
		seen(w2, "", serverVeth, 303+skew, rep(64)),
		seen(w2, "", "tunl0", 325+skew, rep(63)),
		seen(w2, "", "eth0", 340+skew, ipip(rep(63), w2IP, w1IP)),
		seen(w1, "", "eth0", 420, ipip(rep(63), w2IP, w1IP)),
		seen(w1, "", "tunl0", 435, rep(63)),
		seen(w1, "", clientVeth, 450, rep(62)),
		seen(w1, clientNetns, "eth0", 452, rep(62)),
		fwd(w1, 200, req(63), clientVeth, "tunl0", 41),
		accept(w1, 204, req(63), clientVeth, "tunl0", 57),
		fwd(w2, 260+skew, req(62), "tunl0", serverVeth, 41),
		accept(w2, 264+skew, req(62), "tunl0", serverVeth, 57),
		fwd(w2, 500+skew, rep(63), serverVeth, "tunl0", 41),
		accept(w2, 504+skew, rep(63), serverVeth, "tunl0", 57),
		fwd(w1, 600, rep(62), "tunl0", clientVeth, 41),
		accept(w1, 604, rep(62), "tunl0", clientVeth, 57),
		lookup(w1, clientVeth, 7000, routeToW2Block),
		lookup(w2, serverVeth, 7000+skew, routeToW1Block),
	}
	hops[len(hops)-1].Direction = trace.Reply
	return scenario{name: "pod-to-pod-ipip-skewed", in: Input{
		Flow:   trace.Flow{Proto: trace.ICMP, Src: addr("172.16.158.7"), SrcPort: id, Dst: addr("172.16.184.5")},
		Hops:   hops,
		Nodes:  []string{w1, w2},
		Answer: &Answer{Result: trace.Replied, Reply: "echo reply"},
		Destinations: []Endpoint{{Name: serverNetns, Addr: addr("172.16.184.5"), Node: w2,
			Netns: serverNetns, HostVeth: serverVeth}},
	}}
}

// nodePortViaOtherNode is seed §7: curl from outside to NodePort 31010 of
// k8s-w1, which has no nginx pod. kube-proxy DNATs to the pod on k8s-w2 and
// masquerades the source to k8s-w1's tunnel address; the reply comes back
// through k8s-w1, which undoes both.
func nodePortViaOtherNode() scenario {
	const client, nodePort, pod, masq = "192.168.10.200:40001", "192.168.10.101:31010", "172.16.184.2:80", "172.16.158.0:61234"
	const ext, svc, sep = "KUBE-EXT-KJHTUBXH5MFZDUNE", "KUBE-SVC-KJHTUBXH5MFZDUNE", "KUBE-SEP-6GHSQDSCB2WQHVBB"
	pre := tcp(client, nodePort, "S", 64)
	fwd := tcp(client, pod, "S", 63)
	fwd.Mark = 0x4000
	hops := []trace.Hop{
		seen(outside, "", "eth0", 0, tcp(client, nodePort, "S", 64)),
		seen(w1, "", "eth0", 10, tcp(client, nodePort, "S", 64)),
		seen(w1, "", "tunl0", 60, tcp(masq, pod, "S", 63)),
		seen(w1, "", "eth0", 75, ipip(tcp(masq, pod, "S", 63), w1IP, w2IP)),
		seen(w2, "", "eth0", 160, ipip(tcp(masq, pod, "S", 63), w1IP, w2IP)),
		seen(w2, "", "tunl0", 175, tcp(masq, pod, "S", 63)),
		seen(w2, "", nodePortVet, 190, tcp(masq, pod, "S", 62)),
		seen(w2, "", nodePortVet, 320, tcp(pod, masq, "S.", 64)),
		seen(w2, "", "tunl0", 340, tcp(pod, masq, "S.", 63)),
		seen(w2, "", "eth0", 352, ipip(tcp(pod, masq, "S.", 63), w2IP, w1IP)),
		seen(w1, "", "eth0", 440, ipip(tcp(pod, masq, "S.", 63), w2IP, w1IP)),
		seen(w1, "", "tunl0", 455, tcp(pod, masq, "S.", 63)),
		seen(w1, "", "eth0", 480, tcp(nodePort, client, "S.", 62)),
		seen(outside, "", "eth0", 490, tcp(nodePort, client, "S.", 62)),
	}
	hops = append(hops,
		legacy(w1, 600, pre, "nat", "PREROUTING", 1, ruleServicePortals, "eth0", ""),
		legacy(w1, 603, pre, "nat", "KUBE-SERVICES", 5, `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`, "eth0", ""),
		legacy(w1, 606, pre, "nat", "KUBE-NODEPORTS", 1, `-A KUBE-NODEPORTS -p tcp -m comment --comment "default/nginx-nodeport-test" -m tcp --dport 31010 -j `+ext, "eth0", ""),
		legacy(w1, 609, pre, "nat", ext, 1, `-A `+ext+` -m comment --comment "masquerade traffic for default/nginx-nodeport-test external destinations" -j KUBE-MARK-MASQ`, "eth0", ""),
		legacy(w1, 612, pre, "nat", "KUBE-MARK-MASQ", 1, `-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000`, "eth0", ""),
		legacy(w1, 615, pre, "nat", "KUBE-MARK-MASQ", 0, "", "eth0", ""),
		legacy(w1, 618, pre, "nat", ext, 2, `-A `+ext+` -j `+svc, "eth0", ""),
		legacy(w1, 621, pre, "nat", svc, 2, `-A `+svc+` -m comment --comment "default/nginx-nodeport-test -> 172.16.184.2:80" -j `+sep, "eth0", ""),
		legacy(w1, 624, pre, "nat", sep, 2, `-A `+sep+` -p tcp -m comment --comment "default/nginx-nodeport-test" -m tcp -j DNAT --to-destination 172.16.184.2:80`, "eth0", ""),
		legacy(w1, 630, fwd, "filter", "FORWARD", 2, `-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`, "eth0", "tunl0"),
		legacy(w1, 633, fwd, "filter", "KUBE-FORWARD", 2, `-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`, "eth0", "tunl0"),
		legacy(w1, 640, fwd, "nat", "POSTROUTING", 1, rulePostrouting, "", "tunl0"),
		legacy(w1, 643, fwd, "nat", "KUBE-POSTROUTING", 2, `-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000`, "", "tunl0"),
		legacy(w1, 646, fwd, "nat", "KUBE-POSTROUTING", 3, `-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`, "", "tunl0"),
		// conntrack reports the entry when it is confirmed, after POSTROUTING.
		natSeen(w1, 650, "DNAT", nodePort, pod, [2]string{client, nodePort}, [2]string{pod, masq}),
		natSeen(w1, 650, "SNAT", client, masq, [2]string{client, nodePort}, [2]string{pod, masq}),
		legacy(w1, 900, tcp(pod, client, "S.", 62), "filter", "FORWARD", 2, `-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`, "tunl0", "eth0"),
		legacy(w1, 903, tcp(pod, client, "S.", 62), "filter", "KUBE-FORWARD", 3, `-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, "tunl0", "eth0"),
	)
	hops = append(hops, calicoForward(w2, 700, tcp(masq, pod, "S", 62), "tunl0", nodePortVet)...)
	hops = append(hops, calicoForward(w2, 800, tcp(pod, masq, "S.", 63), nodePortVet, "tunl0")...)
	hops = append(hops, lookup(w1, "eth0", 9000, routeToW2Block))
	return scenario{name: "nodeport-via-other-node", in: Input{
		Flow:   trace.Flow{Proto: trace.TCP, Src: ap(client).Addr(), SrcPort: 40001, Dst: ap(nodePort).Addr(), DstPort: 31010},
		Hops:   hops,
		Nodes:  []string{outside, w1, w2},
		Answer: &Answer{Result: trace.Replied, Reply: "SYN-ACK"},
		Destinations: []Endpoint{{Name: nodePortPod, Addr: ap(pod).Addr(), Node: w2,
			Netns: nodePortPod, HostVeth: nodePortVet}},
	}}
}

// rejectNoEndpoints is a curl from client to the nginx-test ClusterIP after
// the deployment was scaled to zero: kube-proxy's filter KUBE-SERVICES
// rejects it with an ICMP port unreachable.
func rejectNoEndpoints() scenario {
	const client, vip = "172.16.158.16:40010", "10.104.209.155:80"
	syn := func(ttl uint8) *trace.Packet { return tcp(client, vip, "S", ttl) }
	unreachable := func(ttl uint8) *trace.Packet {
		return &trace.Packet{Proto: trace.ICMP, Src: addr(w1IP), Dst: ap(client).Addr(), Length: 88, TTL: ttl,
			ICMPType: 3, ICMPCode: 3}
	}
	const note = "port unreachable for tcp 172.16.158.16:40010 > 10.104.209.155:80"
	hops := []trace.Hop{
		seen(w1, clientNetns, "eth0", 0, syn(64)),
		seen(w1, "", clientVeth, 4, syn(64)),
		seen(w1, "", clientVeth, 40, unreachable(64)),
		seen(w1, clientNetns, "eth0", 42, unreachable(64)),
		legacy(w1, 200, syn(64), "nat", "PREROUTING", 1, ruleServicePortals, clientVeth, ""),
		legacy(w1, 203, syn(64), "nat", "KUBE-SERVICES", 0, "", clientVeth, ""),
		legacy(w1, 206, syn(64), "nat", "PREROUTING", 0, ":PREROUTING ACCEPT", clientVeth, ""),
		legacy(w1, 210, syn(63), "filter", "FORWARD", 2, `-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`, clientVeth, "eth0"),
		legacy(w1, 213, syn(63), "filter", "KUBE-FORWARD", 0, "", clientVeth, "eth0"),
		legacy(w1, 216, syn(63), "filter", "FORWARD", 3, `-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`, clientVeth, "eth0"),
		legacy(w1, 219, syn(63), "filter", "KUBE-SERVICES", 3, `-A KUBE-SERVICES -d 10.104.209.155/32 -p tcp -m comment --comment "default/nginx-test:80 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`, clientVeth, "eth0"),
		lookup(w1, clientVeth, 4000, routeDefault),
	}
	hops[2].Note, hops[3].Note = note, note
	return scenario{name: "reject-no-endpoints", in: Input{
		Flow:   trace.Flow{Proto: trace.TCP, Src: ap(client).Addr(), SrcPort: 40010, Dst: ap(vip).Addr(), DstPort: 80},
		Hops:   hops,
		Nodes:  []string{w1},
		Answer: &Answer{Result: trace.Dropped, Reply: "ICMP port unreachable from 192.168.10.101"},
	}}
}

// forwardPolicyDrop is seed §1's failing case on a node: FORWARD's policy
// is DROP and no rule accepts pod traffic, so the SYN is dropped, and
// dropped again when TCP retransmits it a second later.
func forwardPolicyDrop() scenario {
	const client, server = "172.16.158.16:40020", "172.16.158.15:80"
	var hops []trace.Hop
	for k, at := range []int{0, 1_000_000} {
		syn := func(ttl uint8) *trace.Packet { return tcp(client, server, "S", ttl) }
		hops = append(hops,
			seen(w1, clientNetns, "eth0", at, syn(64)),
			seen(w1, "", clientVeth, at+4, syn(64)),
			legacy(w1, at+150, syn(64), "nat", "PREROUTING", 0, ":PREROUTING ACCEPT", clientVeth, ""),
			legacy(w1, at+155, syn(63), "filter", "FORWARD", 0, ":FORWARD DROP", clientVeth, serverVeth))
		if k == 0 {
			// The first SYN's FORWARD event was also reported by the
			// nf_tables tracer: the node has the iptables-nft rules too.
			hops = append(hops, nft(w1, at+157, syn(63), "filter", "FORWARD", 0, 0, ":FORWARD DROP", clientVeth, serverVeth))
		}
	}
	hops = append(hops, lookup(w1, clientVeth, 2_100_000, routeToServerOnW1))
	return scenario{name: "forward-policy-drop", in: Input{
		Flow:   trace.Flow{Proto: trace.TCP, Src: ap(client).Addr(), SrcPort: 40020, Dst: ap(server).Addr(), DstPort: 80},
		Hops:   hops,
		Nodes:  []string{w1},
		Answer: &Answer{Result: trace.NoAnswer, Reply: "no answer after 2s"},
	}}
}

// lostOnTheWay is a connection from client on k8s-w1 to a server on k8s-w2
// that k8s-w2's sources saw nothing of: its capture ring overflowed and its
// nflog socket dropped events. The path ends at k8s-w1's NIC.
func lostOnTheWay() scenario {
	const client, server = "172.16.158.16:40030", "172.16.184.5:8080"
	syn := func(ttl uint8) *trace.Packet { return tcp(client, server, "S", ttl) }
	hops := []trace.Hop{
		seen(w1, clientNetns, "eth0", 0, syn(64)),
		seen(w1, "", clientVeth, 5, syn(64)),
		seen(w1, "", "tunl0", 30, syn(63)),
		seen(w1, "", "eth0", 44, ipip(syn(63), w1IP, w2IP)),
		lookup(w1, clientVeth, 3000, routeToW2Block),
	}
	hops = append(hops, calicoForward(w1, 200, syn(63), clientVeth, "tunl0")...)
	return scenario{name: "lost-on-the-way", in: Input{
		Flow:  trace.Flow{Proto: trace.TCP, Src: ap(client).Addr(), SrcPort: 40030, Dst: ap(server).Addr(), DstPort: 8080},
		Hops:  hops,
		Nodes: []string{w1, w2},
		Lost: []trace.Loss{
			{Node: w2, Source: "capture", Count: 37, Detail: "eth0: 37 packets dropped by the kernel, capture ring full"},
			{Node: w2, Source: "nflog", Count: 5, Detail: "5 nflog messages lost: the socket's receive buffer overran (ENOBUFS)"},
		},
		Answer: &Answer{Result: trace.NoAnswer, Reply: "no answer after 2s"},
	}}
}
