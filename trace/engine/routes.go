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
// the client's port (directionOf), or, once a SNAT that the node's
// conntrack reported gave the client another end, by that end.
type directions struct {
	flow trace.Flow
	// clients are the client's ends after the flow's SNATs.
	clients []netip.AddrPort
}

// directionsOf collects the client's ends after the SNATs of flow among
// the node's hops.
func directionsOf(flow trace.Flow, hops []trace.Hop) directions {
	d := directions{flow: flow}
	for _, h := range hops {
		if h.Kind == trace.HopNAT && h.NAT != nil && h.Netns == "" && h.NAT.Type == "SNAT" && follows(flow, h.NAT) {
			d.clients = append(d.clients, h.NAT.To)
		}
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
// node (see routedPacket), as FIB lookup hops of the direction. A lookup
// that fails is reported as a loss; a direction the node did not see is not
// looked up.
func routeLookups(node string, flow trace.Flow, hops []trace.Hop) ([]trace.Hop, []trace.Loss) {
	var (
		routes []trace.Hop
		lost   []trace.Loss
	)
	d := directionsOf(flow, hops)
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
