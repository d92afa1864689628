package correlate

import (
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// ICMP types the correlator tells apart.
const (
	icmpEchoReply      = 0
	icmpUnreachable    = 3
	icmpEchoRequest    = 8
	icmpTimeExceeded   = 11
	icmpParameterIssue = 12
)

// identity is the traced flow's two ends as they may appear on the wire:
// the client side (the original source and each SNAT'd form of it) and the
// server side (the original destination and each DNAT'd form). A packet
// from a client end to a server end is the request, whatever mix of
// rewrites it has had so far; the other way round, the reply. For ICMP echo
// the client ends carry the echo identifier as their port and the server
// ends port 0, as trace.Flow does.
type identity struct {
	proto   trace.Proto
	clients []netip.AddrPort
	servers []netip.AddrPort
}

// newIdentity collects the ends of flow, of its translated forms and of the
// rewrites that the NAT hops record.
func newIdentity(flow trace.Flow, translated []trace.Flow, hops []trace.Hop) identity {
	id := identity{proto: flow.Proto}
	id.add(flow)
	for _, f := range translated {
		id.add(f)
	}
	for _, h := range hops {
		if h.NAT == nil || h.NAT.Original.Proto != flow.Proto {
			continue
		}
		o, r := h.NAT.Original, h.NAT.Reply
		id.add(trace.Flow{Proto: o.Proto, Src: o.Src.Addr(), SrcPort: o.Src.Port(), Dst: o.Dst.Addr(), DstPort: o.Dst.Port()})
		// The request leaves the NAT as the inverse of the reply tuple.
		id.add(trace.Flow{Proto: r.Proto, Src: r.Dst.Addr(), SrcPort: r.Dst.Port(), Dst: r.Src.Addr(), DstPort: r.Src.Port()})
	}
	return id
}

func (id *identity) add(f trace.Flow) {
	if f.Proto != id.proto || !f.Src.IsValid() || !f.Dst.IsValid() {
		return
	}
	client, server := netip.AddrPortFrom(f.Src, f.SrcPort), netip.AddrPortFrom(f.Dst, f.DstPort)
	if f.Proto == trace.ICMP {
		server = netip.AddrPortFrom(f.Dst, 0)
	}
	if !slices.Contains(id.clients, client) {
		id.clients = append(id.clients, client)
	}
	if !slices.Contains(id.servers, server) {
		id.servers = append(id.servers, server)
	}
}

func (id identity) isClient(a netip.Addr) bool {
	return slices.ContainsFunc(id.clients, func(e netip.AddrPort) bool { return e.Addr() == a })
}

func (id identity) isServer(a netip.Addr) bool {
	return slices.ContainsFunc(id.servers, func(e netip.AddrPort) bool { return e.Addr() == a })
}

// direction says which way p travels, or "" when it is not the flow's.
// An ICMP error addressed to a client end is part of the reply: it is what
// a REJECT rule or a router sends back instead of the answer.
func (id identity) direction(p *trace.Packet) trace.Direction {
	if p.Proto == trace.ICMP && isICMPError(p.ICMPType) {
		if id.isClient(p.Dst) {
			return trace.Reply
		}
		return ""
	}
	if p.Proto != id.proto {
		return ""
	}
	src, dst := netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort)
	if p.Proto == trace.ICMP {
		switch p.ICMPType {
		case icmpEchoRequest:
			src, dst = netip.AddrPortFrom(p.Src, p.ICMPID), netip.AddrPortFrom(p.Dst, 0)
		case icmpEchoReply:
			src, dst = netip.AddrPortFrom(p.Src, 0), netip.AddrPortFrom(p.Dst, p.ICMPID)
		default:
			return ""
		}
	}
	switch {
	case slices.Contains(id.clients, src) && slices.Contains(id.servers, dst):
		return trace.Request
	case slices.Contains(id.servers, src) && slices.Contains(id.clients, dst):
		return trace.Reply
	}
	return ""
}

func isICMPError(typ uint8) bool {
	return typ == icmpUnreachable || typ == icmpTimeExceeded || typ == icmpParameterIssue
}

// arpDirection says which direction an ARP exchange serves: the request
// when a client asks (the pod resolving its gateway) or when the address
// asked for is a server's (the node resolving the destination pod); the
// reply the other way round. An exchange between the ends of a tunnel that
// carried the flow serves the direction the tunnel carried. Other ARP is not
// the flow's.
func (id identity) arpDirection(a *trace.ARP, tunnels map[[2]netip.Addr]trace.Direction) trace.Direction {
	asker, asked := a.SenderIP, a.TargetIP
	if a.Op == "reply" {
		asker, asked = a.TargetIP, a.SenderIP
	}
	switch {
	case id.isClient(asker), id.isServer(asked):
		return trace.Request
	case id.isServer(asker), id.isClient(asked):
		return trace.Reply
	}
	return tunnels[[2]netip.Addr{asker, asked}]
}

// contextDirection places a DNS message that is not the traced flow but
// involves one of its addresses, such as the client's lookup of the name it
// then connects to, or the DNS server's query upstream: it prepares or
// serves the request.
func (id identity) contextDirection(h trace.Hop) trace.Direction {
	if h.Kind != trace.HopDNS || h.Packet == nil {
		return ""
	}
	p := h.Packet
	if id.isClient(p.Src) || id.isClient(p.Dst) || id.isServer(p.Src) || id.isServer(p.Dst) {
		return trace.Request
	}
	return ""
}

// packetKind tells the packets of one direction apart: the TCP flags, or
// the ICMP type. The trace follows the probe's first packet and the first
// answer; the connection's later packets (the handshake's ACK, a FIN) are
// of another kind. An empty kind, from a source that did not see the
// transport header, matches any.
func packetKind(p *trace.Packet) string {
	switch p.Proto {
	case trace.TCP:
		if p.TCPFlags == "none" {
			return ""
		}
		return p.TCPFlags
	case trace.ICMP:
		return "icmp " + strconv.Itoa(int(p.ICMPType))
	}
	return ""
}

// firstPacket is the earliest packet seen in one direction.
type firstPacket struct {
	at   time.Time
	kind string
}

// assignDirections sets the Direction of every hop that belongs to the
// traced packet or its answer and leaves out the others: packets of other
// flows, later packets of the connection, ARP for other addresses. A hop
// with a packet is placed by its headers, an ARP hop by the addresses it
// resolves, and a hop without either (a route lookup, a NAT) keeps the
// direction its source gave it, the request when none.
func assignDirections(id identity, hops []trace.Hop) []trace.Hop {
	byPacket := make([]trace.Direction, len(hops))
	first := map[trace.Direction]firstPacket{}
	for i, h := range hops {
		if h.Packet == nil || h.Kind == trace.HopARP {
			continue
		}
		d := id.direction(h.Packet)
		byPacket[i] = d
		if d == "" {
			continue
		}
		if f, ok := first[d]; !ok || h.Time.Before(f.at) {
			first[d] = firstPacket{at: h.Time, kind: packetKind(h.Packet)}
		}
	}
	tunnels := map[[2]netip.Addr]trace.Direction{}
	for i, h := range hops {
		if d := byPacket[i]; d != "" && h.Packet.Outer != nil {
			tunnels[[2]netip.Addr{h.Packet.Outer.Src, h.Packet.Outer.Dst}] = d
		}
	}

	var out []trace.Hop
	for i, h := range hops {
		var d trace.Direction
		switch {
		case h.Kind == trace.HopARP && h.ARP != nil:
			d = id.arpDirection(h.ARP, tunnels)
		case h.Packet != nil:
			d = byPacket[i]
			if d != "" {
				want, got := first[d].kind, packetKind(h.Packet)
				if want != "" && got != "" && want != got {
					d = "" // a later packet of the connection
				}
			} else {
				d = id.contextDirection(h)
			}
		default:
			d = h.Direction
			if d == "" {
				d = trace.Request
			}
		}
		if d == "" {
			continue
		}
		h.Direction = d
		out = append(out, h)
	}
	return out
}
