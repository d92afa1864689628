package correlate

import (
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// deriveDelivery adds a deliver hop after the request's last capture when
// that capture is on the destination's interface: inside the netns of one
// of the destinations, or on its host veth. Without destinations, a request
// seen last inside a netns other than the client's, or on a host veth
// (cali…) other than the client's, is delivered there. A request that a
// rule or a route stops after that capture is not delivered.
func deriveDelivery(hops []trace.Hop, dests []Endpoint) []trace.Hop {
	last := -1
	for i, h := range hops {
		if h.Direction == trace.Request && h.Kind == trace.HopInterface && h.Packet != nil && h.Packet.Outer == nil {
			last = i
		}
	}
	if last < 0 {
		return hops
	}
	seen := hops[last]
	name, ok := destinationOf(seen, dests, hops)
	if !ok {
		return hops
	}
	for _, h := range hops[last+1:] {
		if h.Direction == trace.Request && stopsHere(h) {
			return hops
		}
	}
	p := *seen.Packet
	deliver := trace.Hop{
		Time:      seen.Time,
		Node:      seen.Node,
		Netns:     seen.Netns,
		Kind:      trace.HopDeliver,
		Direction: trace.Request,
		Iface:     seen.Iface,
		Source:    SourceName,
		Packet:    &p,
		Note:      "delivered to " + name,
	}
	out := make([]trace.Hop, 0, len(hops)+1)
	out = append(out, hops[:last+1]...)
	out = append(out, deliver)
	return append(out, hops[last+1:]...)
}

// destinationOf names the destination that the capture seen is on.
func destinationOf(seen trace.Hop, dests []Endpoint, hops []trace.Hop) (string, bool) {
	for _, d := range dests {
		if seen.Packet.Dst != d.Addr || (d.Node != "" && d.Node != seen.Node) {
			continue
		}
		inNetns := d.Netns != "" && seen.Netns == d.Netns
		onVeth := d.HostVeth != "" && seen.Netns == "" && seen.Iface == d.HostVeth
		anywhere := d.Netns == "" && d.HostVeth == ""
		if inNetns || onVeth || anywhere {
			return nameOr(d.Name, d.Addr.String()), true
		}
	}
	if len(dests) > 0 {
		return "", false
	}
	client := hops[0]
	switch {
	case seen.Netns != "" && seen.Netns != client.Netns:
		return seen.Netns, true
	case seen.Netns == "" && strings.HasPrefix(seen.Iface, "cali") && seen.Iface != firstHostVeth(hops):
		return seen.Packet.Dst.String(), true
	}
	return "", false
}

// firstHostVeth is the host veth the request was first seen on, the client's.
func firstHostVeth(hops []trace.Hop) string {
	for _, h := range hops {
		if h.Direction == trace.Request && isCapture(h) && h.Netns == "" && strings.HasPrefix(h.Iface, "cali") {
			return h.Iface
		}
	}
	return ""
}

func nameOr(name, fallback string) string {
	if name == "" {
		return fallback
	}
	return name
}

// stopsHere reports whether the packet's way ends at h: a DROP or REJECT
// rule, a chain policy that drops, a route that discards, or a drop.
func stopsHere(h trace.Hop) bool {
	switch {
	case h.Kind == trace.HopDrop:
		return true
	case h.Kind == trace.HopRule && h.Rule != nil:
		return stops(h.Rule)
	case h.Kind == trace.HopRoute && h.Route != nil:
		return discards(h.Route)
	}
	return false
}

// discards reports whether a route's type makes the kernel discard the
// packet instead of forwarding it.
func discards(r *trace.Route) bool {
	switch r.Type {
	case "blackhole", "unreachable", "prohibit":
		return true
	}
	return false
}
