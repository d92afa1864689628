package tunnel

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestIPIPCarriesPingAndTCPBetweenPods(t *testing.T) {
	t.Parallel()
	l := newLab(t, 2, 2)
	node1, node2 := l.nodes[0], l.nodes[1]
	kernelIPIP := kernelHasIPIP(t, node1.ns)
	l.start(t, IPIP)

	for _, n := range l.nodes {
		if n.dp.Userspace() == kernelIPIP {
			t.Fatalf("%s: userspace IPIP is %v on a kernel whose IPIP support is %v", n.name, n.dp.Userspace(), kernelIPIP)
		}
		tunl0, err := n.nl.LinkByName("tunl0")
		check(t, err)
		wantType := "ipip"
		if n.dp.Userspace() {
			wantType = "tuntap"
		}
		if tunl0.Type() != wantType || tunl0.Attrs().MTU != 1500-20 {
			t.Errorf("%s: tunl0 is a %s device with MTU %d, want %s with MTU 1480", n.name, tunl0.Type(), tunl0.Attrs().MTU, wantType)
		}
		if n.dp.Userspace() && tunl0.Attrs().TxQLen != tunQueueLen {
			t.Errorf("%s: the TUN tunl0 queues %d packets, want %d", n.name, tunl0.Attrs().TxQLen, tunQueueLen)
		}
		checkAddrs(t, n.nl, tunl0, netip.PrefixFrom(n.tunnelAddr, 32))
	}
	checkLines(t, "routes of node1", ownedRouteLines(t, node1.ns), []string{
		"172.16.2.0/24 via 192.168.10.102 dev tunl0 proto bird onlink",
		"blackhole 172.16.1.0/24 proto bird",
	})

	capture := startCapture(t, node2.ns, "eth0")
	ping(t, node1.pods[0], node2.pods[0].ip)
	frames := capture.frames(t)
	for _, want := range []struct {
		outerSrc, outerDst, innerSrc, innerDst netip.Addr
		icmp                                   uint8
	}{
		{node1.ip, node2.ip, node1.pods[0].ip, node2.pods[0].ip, layers.ICMPv4TypeEchoRequest},
		{node2.ip, node1.ip, node2.pods[0].ip, node1.pods[0].ip, layers.ICMPv4TypeEchoReply},
	} {
		outer, inner := findICMP(frames, want.innerSrc, want.innerDst, want.icmp)
		switch {
		case inner == nil:
			t.Fatalf("no ICMP type %d %s → %s on node2's eth0", want.icmp, want.innerSrc, want.innerDst)
		case outer == nil:
			t.Fatalf("ICMP %s → %s crossed the underlay unencapsulated", want.innerSrc, want.innerDst)
		case outer.Protocol != layers.IPProtocolIPv4 || ip(outer.SrcIP) != want.outerSrc || ip(outer.DstIP) != want.outerDst:
			t.Errorf("ICMP %s → %s is wrapped in %v → %v protocol %d, want %s → %s protocol 4",
				want.innerSrc, want.innerDst, outer.SrcIP, outer.DstIP, outer.Protocol, want.outerSrc, want.outerDst)
		case outer.TTL != inner.TTL:
			t.Errorf("outer TTL %d, want the inner packet's %d as with kernel IPIP", outer.TTL, inner.TTL)
		}
	}
	printed, verbose := tcpdump(t, frames), tcpdump(t, frames, "-v")
	for _, want := range []struct{ output, line string }{
		{printed, "IP 192.168.10.101 > 192.168.10.102: IP 172.16.1.10 > 172.16.2.10: ICMP echo request"},
		{printed, "IP 192.168.10.102 > 192.168.10.101: IP 172.16.2.10 > 172.16.1.10: ICMP echo reply"},
		{verbose, "proto IPIP (4)"},
	} {
		if !strings.Contains(want.output, want.line) {
			t.Errorf("tcpdump does not print %q; it prints:\n%s", want.line, want.output)
		}
	}

	tcpEcho(t, node1.pods[1], node2.pods[1], 4<<20)
	tcpEcho(t, node2.pods[0], node1.pods[1], 1<<20)

	if !node2.dp.Userspace() {
		return
	}
	for _, n := range l.nodes {
		s := n.dp.Stats()
		if s.Encapsulated == 0 || s.Decapsulated == 0 || s.Malformed != 0 || s.UnknownSource != 0 || s.WriteErrors != 0 {
			t.Errorf("%s: userspace IPIP stats %+v, want packets both ways and no drops", n.name, s)
		}
	}
	checkUnknownSourceDropped(t, node1, node2)
}

// checkUnknownSourceDropped sends node2 an IPIP packet from an underlay address that is no
// node and checks that node2 drops it instead of delivering it to its pod.
func checkUnknownSourceDropped(t *testing.T, node1, node2 *labNode) {
	t.Helper()
	stranger := netip.MustParseAddr("192.168.10.99")
	eth0, err := node1.nl.LinkByName("eth0")
	check(t, err)
	check(t, node1.nl.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(stranger, 24))}))

	inner := gopacket.NewSerializeBuffer()
	check(t, gopacket.SerializeLayers(inner, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: node1.pods[0].ip.AsSlice(), DstIP: node2.pods[0].ip.AsSlice()},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1},
	))
	before := node2.dp.Stats()
	check(t, node1.ns.Do(func(ns.NetNS) error {
		conn, err := net.ListenIP("ip4:4", &net.IPAddr{IP: stranger.AsSlice()})
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.WriteToIP(inner.Bytes(), &net.IPAddr{IP: node2.ip.AsSlice()})
		return err
	}))
	deadline := time.Now().Add(2 * time.Second)
	for node2.dp.Stats().UnknownSource == before.UnknownSource && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	after := node2.dp.Stats()
	if after.UnknownSource != before.UnknownSource+1 || after.Decapsulated != before.Decapsulated {
		t.Errorf("an IPIP packet from %s changed node2's stats from %+v to %+v, want one more UnknownSource only", stranger, before, after)
	}
}

func TestVXLANCarriesPingBetweenPods(t *testing.T) {
	t.Parallel()
	l := newLab(t, 2, 1)
	node1, node2 := l.nodes[0], l.nodes[1]
	l.start(t, VXLAN)

	link, err := node1.nl.LinkByName("vxlan.calico")
	check(t, err)
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("vxlan.calico is a %s device", link.Type())
	}
	if vx.VxlanId != 4096 || vx.Port != 4789 || vx.MTU != 1450 || vx.Learning || !bytes.Equal(vx.HardwareAddr, node1.vtepMAC) {
		t.Errorf("vxlan.calico has VNI %d port %d MTU %d learning %v MAC %s, want 4096, 4789, 1450, off, %s",
			vx.VxlanId, vx.Port, vx.MTU, vx.Learning, vx.HardwareAddr, node1.vtepMAC)
	}
	if got := node1.dp.VTEPMAC(); !bytes.Equal(got, node1.vtepMAC) {
		t.Errorf("VTEPMAC() = %s, want %s", got, node1.vtepMAC)
	}
	checkAddrs(t, node1.nl, link, netip.PrefixFrom(node1.tunnelAddr, 32))
	checkLines(t, "routes of node1", ownedRouteLines(t, node1.ns), []string{
		"172.16.2.0/24 via 172.16.2.0 dev vxlan.calico proto bird onlink",
		"blackhole 172.16.1.0/24 proto bird",
	})
	checkLines(t, "neighbors of vxlan.calico", lines(run(t, node1.ns, "ip", "neigh", "show", "dev", "vxlan.calico")),
		[]string{"172.16.2.0 lladdr 66:00:00:00:00:02 PERMANENT"})
	checkLines(t, "FDB of vxlan.calico", lines(run(t, node1.ns, "bridge", "fdb", "show", "dev", "vxlan.calico")),
		[]string{"66:00:00:00:00:02 dst 192.168.10.102 self permanent"})

	capture := startCapture(t, node2.ns, "eth0")
	ping(t, node1.pods[0], node2.pods[0].ip)
	frames := capture.frames(t)
	outer, inner := findICMP(frames, node1.pods[0].ip, node2.pods[0].ip, layers.ICMPv4TypeEchoRequest)
	if inner == nil || outer == nil {
		t.Fatalf("no encapsulated echo request %s → %s on node2's eth0", node1.pods[0].ip, node2.pods[0].ip)
	}
	if ip(outer.SrcIP) != node1.ip || ip(outer.DstIP) != node2.ip || outer.Protocol != layers.IPProtocolUDP {
		t.Errorf("echo request wrapped in %v → %v protocol %d, want node1 → node2 UDP", outer.SrcIP, outer.DstIP, outer.Protocol)
	}
	if vni := vxlanVNIOf(frames, node1.pods[0].ip); vni != 4096 {
		t.Errorf("echo request carried in VNI %d, want 4096", vni)
	}
}

func TestNoEncapRoutesPingOverTheUnderlay(t *testing.T) {
	t.Parallel()
	l := newLab(t, 2, 1)
	node1, node2 := l.nodes[0], l.nodes[1]
	l.start(t, NoEncap)

	checkLines(t, "routes of node1", ownedRouteLines(t, node1.ns), []string{
		"172.16.2.0/24 via 192.168.10.102 dev eth0 proto bird",
		"blackhole 172.16.1.0/24 proto bird",
	})
	capture := startCapture(t, node2.ns, "eth0")
	ping(t, node1.pods[0], node2.pods[0].ip)
	outer, inner := findICMP(capture.frames(t), node1.pods[0].ip, node2.pods[0].ip, layers.ICMPv4TypeEchoRequest)
	if inner == nil || outer != nil {
		t.Errorf("want the echo request %s → %s bare on node2's eth0; found %v inside %v", node1.pods[0].ip, node2.pods[0].ip, inner != nil, outer != nil)
	}
}

func TestSyncReconcilesOnlyItsOwnRoutes(t *testing.T) {
	t.Parallel()
	for _, mode := range []Mode{IPIP, VXLAN, NoEncap} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			l := newLab(t, 1, 0)
			n := l.nodes[0]
			dp := startDataplane(t, n.ns, n.node(mode))
			eth0, err := n.nl.LinkByName("eth0")
			check(t, err)

			foreign := []*netlink.Route{
				{Dst: ipNet(netip.MustParsePrefix("10.200.0.0/16")), Gw: net.IPv4(192, 168, 10, 1), LinkIndex: eth0.Attrs().Index, Protocol: unix.RTPROT_STATIC},
				{Dst: ipNet(netip.MustParsePrefix("172.16.99.0/24")), Type: unix.RTN_BLACKHOLE, Protocol: unix.RTPROT_BOOT},
			}
			for _, r := range foreign {
				check(t, n.nl.RouteAdd(r))
			}
			node2 := Block{CIDR: netip.MustParsePrefix("172.16.2.0/24"), Node: "node2", NodeIP: netip.MustParseAddr("192.168.10.102"),
				VTEPMAC: net.HardwareAddr{0x66, 0, 0, 0, 0, 2}, VTEPIP: netip.MustParseAddr("172.16.2.0")}
			node2b := node2
			node2b.CIDR = netip.MustParsePrefix("172.16.12.0/24")
			node3 := Block{CIDR: netip.MustParsePrefix("172.16.3.0/24"), Node: "node3", NodeIP: netip.MustParseAddr("192.168.10.103"),
				VTEPMAC: net.HardwareAddr{0x66, 0, 0, 0, 0, 3}, VTEPIP: netip.MustParseAddr("172.16.3.0")}

			check(t, dp.Sync([]Block{n.blockOf(), node2, node2b, node3}))
			checkLines(t, "routes with node3", ownedRouteLines(t, n.ns), wantRoutes(mode, node2, node2b, node3))

			// Break two of the routes, and in VXLAN mode node2's VTEP entries: Sync must repair them.
			check(t, n.nl.RouteDel(&netlink.Route{Dst: ipNet(node2.CIDR), Table: unix.RT_TABLE_MAIN}))
			check(t, n.nl.RouteReplace(gatewayRoute(node2b.CIDR, netip.MustParseAddr("192.168.10.77"), eth0.Attrs().Index, false)))
			if mode == VXLAN {
				run(t, n.ns, "ip", "neigh", "replace", "172.16.2.0", "lladdr", "66:00:00:00:00:77", "dev", "vxlan.calico", "nud", "permanent")
				run(t, n.ns, "bridge", "fdb", "replace", "66:00:00:00:00:02", "dev", "vxlan.calico", "dst", "192.168.10.77", "self", "permanent")
			}

			check(t, dp.Sync([]Block{node2b, n.blockOf(), node2}))
			checkLines(t, "routes after node3 left", ownedRouteLines(t, n.ns), wantRoutes(mode, node2, node2b))
			checkLines(t, "foreign routes", foreignRouteLines(t, n.ns), []string{
				"10.200.0.0/16 via 192.168.10.1 dev eth0 proto static",
				"blackhole 172.16.99.0/24", // proto boot, which ip route does not print
			})
			switch {
			case mode == VXLAN:
				checkLines(t, "neighbors of vxlan.calico", lines(run(t, n.ns, "ip", "neigh", "show", "dev", "vxlan.calico")),
					[]string{"172.16.2.0 lladdr 66:00:00:00:00:02 PERMANENT"})
				checkLines(t, "FDB of vxlan.calico", lines(run(t, n.ns, "bridge", "fdb", "show", "dev", "vxlan.calico")),
					[]string{"66:00:00:00:00:02 dst 192.168.10.102 self permanent"})
			case mode == IPIP && dp.Userspace():
				peers := dp.carrier.(*userspaceIPIP).peers.Load()
				if _, ok := peers.owner([4]byte{172, 16, 3, 9}); ok {
					t.Error("the userspace path still encapsulates for node3's block")
				}
				if to, ok := peers.owner([4]byte{172, 16, 12, 9}); !ok || to.Addr != [4]byte{192, 168, 10, 102} {
					t.Errorf("the userspace path sends 172.16.12.9 to %v, want node2", to)
				}
				if peers.nodes[[4]byte{192, 168, 10, 103}] {
					t.Error("the userspace path still accepts IPIP from node3")
				}
			}

			check(t, dp.Sync(nil))
			checkLines(t, "routes after every block left", ownedRouteLines(t, n.ns), nil)
			checkLines(t, "foreign routes", foreignRouteLines(t, n.ns), []string{
				"10.200.0.0/16 via 192.168.10.1 dev eth0 proto static",
				"blackhole 172.16.99.0/24", // proto boot, which ip route does not print
			})
		})
	}
}

// wantRoutes is what `ip route` prints for node1's block and remote blocks in mode.
func wantRoutes(mode Mode, remote ...Block) []string {
	want := []string{"blackhole 172.16.1.0/24 proto bird"}
	for _, b := range remote {
		switch mode {
		case IPIP:
			want = append(want, b.CIDR.String()+" via "+b.NodeIP.String()+" dev tunl0 proto bird onlink")
		case VXLAN:
			want = append(want, b.CIDR.String()+" via "+b.VTEPIP.String()+" dev vxlan.calico proto bird onlink")
		case NoEncap:
			want = append(want, b.CIDR.String()+" via "+b.NodeIP.String()+" dev eth0 proto bird")
		}
	}
	return want
}

func TestSyncLeavesAForeignRouteForABlock(t *testing.T) {
	t.Parallel()
	l := newLab(t, 1, 0)
	n := l.nodes[0]
	dp := startDataplane(t, n.ns, n.node(NoEncap))
	eth0, err := n.nl.LinkByName("eth0")
	check(t, err)
	check(t, n.nl.RouteAdd(&netlink.Route{
		Dst: ipNet(netip.MustParsePrefix("172.16.5.0/24")), Gw: net.IPv4(192, 168, 10, 1), LinkIndex: eth0.Attrs().Index, Protocol: unix.RTPROT_STATIC,
	}))
	node5 := Block{CIDR: netip.MustParsePrefix("172.16.5.0/24"), Node: "node5", NodeIP: netip.MustParseAddr("192.168.10.105")}
	node6 := Block{CIDR: netip.MustParsePrefix("172.16.6.0/24"), Node: "node6", NodeIP: netip.MustParseAddr("192.168.10.106")}

	err = dp.Sync([]Block{n.blockOf(), node5, node6})
	if err == nil || !strings.Contains(err.Error(), "172.16.5.0/24") {
		t.Errorf("Sync over a foreign route for 172.16.5.0/24 returned %v, want an error naming it", err)
	}
	checkLines(t, "owned routes", ownedRouteLines(t, n.ns), wantRoutes(NoEncap, node6))
	checkLines(t, "foreign routes", foreignRouteLines(t, n.ns), []string{"172.16.5.0/24 via 192.168.10.1 dev eth0 proto static"})
}

func TestSyncRejectsInvalidBlocks(t *testing.T) {
	t.Parallel()
	l := newLab(t, 1, 0)
	n := l.nodes[0]
	dp := startDataplane(t, n.ns, n.node(VXLAN))
	good := Block{CIDR: netip.MustParsePrefix("172.16.2.0/24"), Node: "node2", NodeIP: netip.MustParseAddr("192.168.10.102"),
		VTEPMAC: net.HardwareAddr{0x66, 0, 0, 0, 0, 2}, VTEPIP: netip.MustParseAddr("172.16.2.0")}
	for _, bad := range []Block{
		{CIDR: netip.MustParsePrefix("172.16.3.7/24"), Node: "node3", NodeIP: netip.MustParseAddr("192.168.10.103")},
		{CIDR: netip.MustParsePrefix("172.16.4.0/24"), NodeIP: netip.MustParseAddr("192.168.10.104")},
		{CIDR: netip.MustParsePrefix("172.16.5.0/24"), Node: "node5"},
		{CIDR: netip.MustParsePrefix("172.16.6.0/24"), Node: "node6", NodeIP: netip.MustParseAddr("192.168.10.106")},
		good,
	} {
		if err := dp.Sync([]Block{good, bad}); err == nil {
			t.Errorf("Sync accepted %+v", bad)
		}
		checkLines(t, "routes", ownedRouteLines(t, n.ns), wantRoutes(VXLAN, good)[1:])
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, mode := range []Mode{IPIP, VXLAN, NoEncap} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			l := newLab(t, 2, 1)
			node1, node2 := l.nodes[0], l.nodes[1]
			before := netnsState(t, node1)
			l.start(t, mode)
			ping(t, node1.pods[0], node2.pods[0].ip)
			if netnsState(t, node1) == before {
				t.Fatal("the dataplane changed nothing in node1")
			}
			check(t, node1.dp.Close())
			// A process the other tests fork holds copies of this one's files until it execs,
			// which can keep a closed socket alive for a moment.
			after := netnsState(t, node1)
			for deadline := time.Now().Add(2 * time.Second); after != before && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
				after = netnsState(t, node1)
			}
			if after != before {
				t.Errorf("node1 after Close:\n%s\nwant as before New:\n%s", after, before)
			}
			check(t, node1.dp.Close())
			if err := node1.dp.Sync([]Block{node1.blockOf()}); err == nil {
				t.Error("Sync after Close succeeded")
			}
		})
	}
}

// netnsState is everything the package could leave in a netns: links, addresses, IPv4
// routes of every table, neighbors and raw sockets.
func netnsState(t *testing.T, node *labNode) string {
	n := node.ns
	t.Helper()
	var raw []byte
	check(t, n.Do(func(ns.NetNS) error {
		var err error
		raw, err = os.ReadFile("/proc/thread-self/net/raw")
		return err
	}))
	var b strings.Builder
	links, err := node.nl.LinkList()
	check(t, err)
	for _, l := range links {
		fmt.Fprintf(&b, "%s %s mtu %d\n", l.Attrs().Name, l.Type(), l.Attrs().MTU)
	}
	for _, cmd := range [][]string{
		{"ip", "-o", "-4", "addr", "show"},
		{"ip", "-4", "route", "show", "table", "all"},
		{"ip", "neigh", "show", "nud", "permanent"},
	} {
		b.WriteString(run(t, n, cmd...))
	}
	b.Write(raw)
	return b.String()
}

func TestNewRejectsBadNodes(t *testing.T) {
	t.Parallel()
	l := newLab(t, 1, 0)
	n := l.nodes[0]
	good := n.node(VXLAN)
	for name, change := range map[string]func(*Node){
		"no name":           func(node *Node) { node.Name = "" },
		"IPv6 underlay":     func(node *Node) { node.IP = netip.MustParseAddr("fd00::1") },
		"missing interface": func(node *Node) { node.Interface = "eth9" },
		"unknown mode":      func(node *Node) { node.Mode = "gre" },
		"VXLAN without VTEP": func(node *Node) {
			node.TunnelAddr = netip.Addr{}
		},
	} {
		node := good
		change(&node)
		check(t, n.ns.Do(func(ns.NetNS) error {
			if dp, err := New(node); err == nil {
				dp.Close()
				t.Errorf("New accepted a node with %s", name)
			}
			return nil
		}))
	}
	stranger := n.node(IPIP)
	stranger.IP = netip.MustParseAddr("192.168.10.250")
	check(t, n.ns.Do(func(ns.NetNS) error {
		if dp, err := New(stranger); err == nil {
			dp.Close()
			t.Error("New accepted an IPIP node whose underlay address is not on the node")
		}
		return nil
	}))
	for _, name := range []string{"vxlan.calico", "tunl0"} {
		if _, err := n.nl.LinkByName(name); err == nil {
			t.Errorf("a rejected New left %s behind", name)
		}
	}
}

// kernelHasIPIP tells, with iproute2 rather than this package, whether the kernel can make
// ipip links.
func kernelHasIPIP(t *testing.T, n ns.NetNS) bool {
	t.Helper()
	add := exec.Command("nsenter", "--net="+n.Path(), "ip", "link", "add", "ipipprobe", "type", "ipip", "remote", "192.0.2.1")
	if add.Run() != nil {
		return false
	}
	run(t, n, "ip", "link", "del", "ipipprobe")
	return true
}

// findICMP finds the ICMP packet of type icmp from src to dst in frames, and the outer IPv4
// header it was wrapped in, if any.
func findICMP(frames [][]byte, src, dst netip.Addr, icmp uint8) (outer, inner *layers.IPv4) {
	for _, frame := range frames {
		p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
		msg, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if !ok || msg.TypeCode.Type() != icmp {
			continue
		}
		var headers []*layers.IPv4
		for _, l := range p.Layers() {
			if h, ok := l.(*layers.IPv4); ok {
				headers = append(headers, h)
			}
		}
		last := headers[len(headers)-1]
		if ip(last.SrcIP) != src || ip(last.DstIP) != dst {
			continue
		}
		if len(headers) > 1 {
			return headers[len(headers)-2], last
		}
		return nil, last
	}
	return nil, nil
}

// vxlanVNIOf is the VNI of the first VXLAN frame carrying a packet from src.
func vxlanVNIOf(frames [][]byte, src netip.Addr) uint32 {
	for _, frame := range frames {
		p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
		vx, ok := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
		if !ok {
			continue
		}
		for _, l := range p.Layers() {
			if h, ok := l.(*layers.IPv4); ok && ip(h.SrcIP) == src {
				return vx.VNI
			}
		}
	}
	return 0
}

func ip(b net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

// foreignRouteLines is what `ip -4 route` prints for routes of other protocols than bird,
// leaving out the kernel's routes for addresses.
func foreignRouteLines(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var foreign []string
	for _, line := range lines(run(t, n, "ip", "-4", "route", "show", "table", "main")) {
		if !strings.Contains(line, "proto bird") && !strings.Contains(line, "proto kernel") {
			foreign = append(foreign, line)
		}
	}
	slices.Sort(foreign)
	return foreign
}

func lines(s string) []string {
	var out []string
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out
}

func checkLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n%s\nwant:\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func checkAddrs(t *testing.T, h *netlink.Handle, link netlink.Link, want netip.Prefix) {
	t.Helper()
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	check(t, err)
	if len(addrs) != 1 || addrs[0].IPNet.String() != want.String() {
		t.Errorf("%s has addresses %v, want %s", link.Attrs().Name, addrs, want)
	}
}
