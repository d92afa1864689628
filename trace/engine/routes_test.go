package engine

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// seenAt is an interface hop of a TCP packet on iface, at t milliseconds.
func seenAt(t int, iface, src, dst string) trace.Hop {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return trace.Hop{
		Time:  time.UnixMilli(int64(t)),
		Kind:  trace.HopInterface,
		Iface: iface,
		Packet: &trace.Packet{Proto: trace.TCP, Src: s.Addr(), SrcPort: s.Port(),
			Dst: d.Addr(), DstPort: d.Port(), TCPFlags: "S"},
	}
}

// The endpoint's node behind a node port sees the request only with the
// source that the node port's MASQUERADE gave it, a port of its own. It
// takes the first packet to the endpoint as the flow's, not a later one of
// another client, and looks up both directions from there.
func TestRoutedPacketAfterAnotherNodesMasquerade(t *testing.T) {
	flow := trace.Flow{Proto: trace.TCP, Src: netip.MustParseAddr("192.168.10.1"), SrcPort: 57376,
		Dst: netip.MustParseAddr("192.168.10.102"), DstPort: 31010}
	servers := []netip.AddrPort{netip.MustParseAddrPort("192.168.10.102:31010"),
		netip.MustParseAddrPort("172.16.198.8:80")}
	hops := []trace.Hop{
		seenAt(30, "tunl0", "172.16.65.0:40000", "172.16.198.8:80"), // another client, later
		seenAt(10, "tunl0", "172.16.19.0:25590", "172.16.198.8:80"),
		seenAt(11, "cali944d9ad82c3", "172.16.19.0:25590", "172.16.198.8:80"),
		seenAt(12, "cali944d9ad82c3", "172.16.198.8:80", "172.16.19.0:25590"),
		seenAt(13, "tunl0", "172.16.198.8:80", "172.16.19.0:25590"),
	}
	d := directionsOf(flow, servers, hops)
	for dir, want := range map[trace.Direction]route.Query{
		trace.Request: {Src: netip.MustParseAddr("172.16.19.0"), Dst: netip.MustParseAddr("172.16.198.8"), Iif: "tunl0"},
		trace.Reply:   {Src: netip.MustParseAddr("172.16.198.8"), Dst: netip.MustParseAddr("172.16.19.0"), Iif: "cali944d9ad82c3"},
	} {
		q, ok := routedPacket(d, dir, hops)
		if !ok || q != want {
			t.Errorf("%s: looked up %+v (%t), want %+v", dir, q, ok, want)
		}
	}
}

// A node that sees the flow by the client's port does not take another
// client's packet to the same server for it.
func TestRoutedPacketKeepsTheClientsPort(t *testing.T) {
	flow := trace.Flow{Proto: trace.TCP, Src: netip.MustParseAddr("172.16.198.2"), SrcPort: 40001,
		Dst: netip.MustParseAddr("172.16.198.8"), DstPort: 80}
	servers := []netip.AddrPort{netip.MustParseAddrPort("172.16.198.8:80")}
	hops := []trace.Hop{
		seenAt(5, "cali0000000000a", "172.16.198.9:50000", "172.16.198.8:80"), // another client, earlier
		seenAt(10, "calia7a3e029a7b", "172.16.198.2:40001", "172.16.198.8:80"),
	}
	d := directionsOf(flow, servers, hops)
	if len(d.clients) != 0 {
		t.Errorf("client ends %v, want none beyond the client's port", d.clients)
	}
	q, ok := routedPacket(d, trace.Request, hops)
	if want := (route.Query{Src: flow.Src, Dst: flow.Dst, Iif: "calia7a3e029a7b"}); !ok || q != want {
		t.Errorf("request: looked up %+v (%t), want %+v", q, ok, want)
	}
	if q, ok := routedPacket(d, trace.Reply, hops); ok {
		t.Errorf("reply: looked up %+v, but the node saw none", q)
	}
}
