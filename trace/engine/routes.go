package engine

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// ICMP echo types.
const (
	icmpEchoReply   = 0
	icmpEchoRequest = 8
)

// directionOf says whether p is the request or the reply of flow, by the
// client's port, which NAT leaves alone, or for ICMP by the echo
// identifier; "" when it is neither.
func directionOf(flow trace.Flow, p *trace.Packet) trace.Direction {
	if p.Proto != flow.Proto {
		return ""
	}
	if flow.Proto == trace.ICMP {
		switch {
		case p.ICMPID != flow.SrcPort:
			return ""
		case p.ICMPType == icmpEchoRequest:
			return trace.Request
		case p.ICMPType == icmpEchoReply:
			return trace.Reply
		}
		return ""
	}
	switch {
	case p.SrcPort == flow.SrcPort:
		return trace.Request
	case p.DstPort == flow.SrcPort:
		return trace.Reply
	}
	return ""
}

// directions tells the request of a flow from its reply on one node: by
// the client's port (directionOf), or, once a SNAT gave the client another
// end, by that end. The SNAT is the node's own, which its conntrack
// reported, or one made before the node: a node that sees the request only
// with a source that another node's MASQUERADE gave it (the endpoint's node
// behind a node port) takes the source of the first packet it saw to one of
// the flow's servers as the client's end.
type directions struct {
	flow trace.Flow
	// clients are the client's ends after the flow's SNATs.
	clients []netip.AddrPort
}

// directionsOf collects the client's ends after the SNATs of flow among
// the node's hops; servers are the ends the request may be addressed to
// (the flow's destination and the target's endpoints).
func directionsOf(flow trace.Flow, servers []netip.AddrPort, hops []trace.Hop) directions {
	d := directions{flow: flow}
	seen := false // a packet of the flow is known by the client's port
	var first *trace.Hop
	for i := range hops {
		h := &hops[i]
		if h.Kind == trace.HopNAT && h.NAT != nil && h.Netns == "" && h.NAT.Type == "SNAT" && follows(flow, h.NAT) {
			d.clients = append(d.clients, h.NAT.To)
		}
		p := h.Packet
		if h.Kind != trace.HopInterface || p == nil || p.Outer != nil || p.Proto != flow.Proto {
			continue
		}
		seen = seen || directionOf(flow, p) != ""
		if slices.Contains(servers, netip.AddrPortFrom(p.Dst, p.DstPort)) && (first == nil || h.Time.Before(first.Time)) {
			first = h
		}
	}
	if len(d.clients) == 0 && !seen && first != nil && flow.Proto != trace.ICMP {
		d.clients = append(d.clients, netip.AddrPortFrom(first.Packet.Src, first.Packet.SrcPort))
	}
	return d
}

// of says whether p is the request or the reply of the flow; "" when it
// is neither.
func (d directions) of(p *trace.Packet) trace.Direction {
	if dir := directionOf(d.flow, p); dir != "" || p.Proto != d.flow.Proto || p.Proto == trace.ICMP {
		return dir
	}
	switch {
	case slices.Contains(d.clients, netip.AddrPortFrom(p.Src, p.SrcPort)):
		return trace.Request
	case slices.Contains(d.clients, netip.AddrPortFrom(p.Dst, p.DstPort)):
		return trace.Reply
	}
	return ""
}

// routeLookups looks up, in the calling thread's network namespace, the
// route that the first packet of the request and of the reply took on the
// node (see routedPacket), as FIB lookup hops of the direction; servers
// are the ends the request may be addressed to (see directionsOf). A lookup
// that fails is reported as a loss; a direction the node did not see is not
// looked up.
func routeLookups(node string, flow trace.Flow, servers []netip.AddrPort, hops []trace.Hop) ([]trace.Hop, []trace.Loss) {
	var (
		routes []trace.Hop
		lost   []trace.Loss
	)
	d := directionsOf(flow, servers, hops)
	for _, dir := range []trace.Direction{trace.Request, trace.Reply} {
		q, ok := routedPacket(d, dir, hops)
		if !ok {
			continue
		}
		h, err := route.LookupHop(node, q)
		if err != nil {
			lost = append(lost, trace.Loss{Node: node, Source: "fib", Count: 1,
				Detail: fmt.Sprintf("looking up the route of the %s to %s: %v", dir, q.Dst, err)})
			continue
		}
		h.Direction = dir
		routes = append(routes, h)
	}
	return routes, lost
}

// routedPacket is the first packet of one direction of flow as the node
// routed it: the packet as it entered the node's namespace (its earliest
// capture there outside a tunnel, or else its first rule hop) with the
// destination that the node's conntrack rewrote before routing (the DNAT
// of the request, the SNAT undone on the reply), from the interface it came
// in on, with the mark it had at the end of PREROUTING. A packet the node
// sent itself (one that met OUTPUT) is looked up as the node's own, without
// a source or an input interface: a REJECT rule's answer carries the
// address it answers for.
func routedPacket(d directions, dir trace.Direction, hops []trace.Hop) (route.Query, bool) {
	var entered *trace.Hop
	local := false
	for i := range hops {
		h := &hops[i]
		if h.Netns != "" || h.Packet == nil || d.of(h.Packet) != dir {
			continue
		}
		switch h.Kind {
		case trace.HopInterface:
			if h.Packet.Outer == nil && (entered == nil || entered.Kind != trace.HopInterface || h.Time.Before(entered.Time)) {
				entered = h
			}
		case trace.HopRule:
			local = local || inChain(h.Rule, "OUTPUT")
			if entered == nil {
				entered = h
			}
		}
	}
	if entered == nil {
		return route.Query{}, false
	}
	p := entered.Packet
	q := route.Query{Dst: p.Dst}
	if !local {
		q.Src, q.Iif = p.Src, entered.Iface
		if entered.Rule != nil {
			q.Iif = entered.Rule.InIface
		}
		q.Mark = preroutingMark(d, dir, kindOf(p), hops)
	}
	for _, h := range hops {
		if h.Kind != trace.HopNAT || h.NAT == nil || h.Netns != "" || !follows(d.flow, h.NAT) {
			continue
		}
		n := h.NAT
		switch {
		case dir == trace.Request && n.Type == "DNAT" && isEndpoint(p.Dst, p.DstPort, n.From):
			q.Dst = n.To.Addr()
		case dir == trace.Reply && n.Type == "SNAT" && isEndpoint(p.Dst, p.DstPort, n.To):
			q.Dst = n.From.Addr()
		}
	}
	return q, true
}

// preroutingMark is the mark of the last PREROUTING rule hop of the packet
// of one direction and kind: the mark routing saw.
func preroutingMark(d directions, dir trace.Direction, kind string, hops []trace.Hop) uint32 {
	var mark uint32
	for _, h := range hops {
		if h.Kind == trace.HopRule && h.Netns == "" && h.Packet != nil && inChain(h.Rule, "PREROUTING") &&
			d.of(h.Packet) == dir && kindOf(h.Packet) == kind {
			mark = h.Rule.Mark
		}
	}
	return mark
}

// kindOf tells the packets of one direction apart: the TCP flags, or the
// ICMP type.
func kindOf(p *trace.Packet) string {
	switch p.Proto {
	case trace.TCP:
		return p.TCPFlags
	case trace.ICMP:
		return fmt.Sprint(p.ICMPType)
	}
	return ""
}

// inChain reports whether a rule hop is in a base chain of the hook named
// by the iptables chain name (PREROUTING, OUTPUT), as iptables or an
// nftables table ("prerouting", "nat-output") names it.
func inChain(r *trace.Rule, hook string) bool {
	return r != nil && strings.Contains(strings.ToUpper(r.Chain), hook)
}

// isEndpoint reports whether an address and port are e; a zero port on
// either side (ICMP) matches any.
func isEndpoint(addr netip.Addr, port uint16, e trace.Endpoint) bool {
	return addr == e.Addr() && (port == 0 || e.Port() == 0 || port == e.Port())
}
