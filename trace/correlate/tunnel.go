package correlate

import (
	"slices"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// tunnelType names the encapsulation of a tunnel device by the names
// Calico gives them, or "" for another interface.
func tunnelType(iface string) string {
	switch {
	case iface == "tunl0":
		return "ipip"
	case strings.HasPrefix(iface, "vxlan"):
		return "vxlan"
	}
	return ""
}

// deriveTunnels adds the encapsulation and decapsulation hops that the
// captures imply. On each node and in each direction, the same inner packet
// seen bare (on tunl0, or by the rules) and then wrapped in an outer header
// (on the NIC) was encapsulated there; wrapped and then bare, it was
// decapsulated. A node where the packet was seen only wrapped is the
// sender when another node saw the same outer header later, the receiver
// when one saw it earlier. Without a wrapped capture, a packet seen last on
// a tunnel device was encapsulated after it, and one seen first on a tunnel
// device was decapsulated before it.
func deriveTunnels(hops []trace.Hop) []trace.Hop {
	type insertion struct {
		before int
		hop    trace.Hop
	}
	var adds []insertion
	for _, seq := range nodeSequences(hops) {
		dir := hops[seq[0]].Direction
		wrapped := slices.DeleteFunc(slices.Clone(seq), func(i int) bool { return !isWrapped(hops[i]) })
		if len(wrapped) == 0 {
			captures := slices.DeleteFunc(slices.Clone(seq), func(i int) bool { return !isCapture(hops[i]) || hops[i].Packet == nil })
			if len(captures) == 0 {
				continue
			}
			first, last := captures[0], captures[len(captures)-1]
			outer := outerOf(hops, dir)
			if t := tunnelType(hops[first].Iface); t != "" {
				adds = append(adds, insertion{first, tunnelHop(hops[first], trace.HopDecap, t, outer, hops[first].Iface, "")})
			}
			if t := tunnelType(hops[last].Iface); t != "" && last != first {
				adds = append(adds, insertion{last + 1, tunnelHop(hops[last], trace.HopEncap, t, outer, hops[last].Iface, "")})
			}
			continue
		}
		first, last := wrapped[0], wrapped[len(wrapped)-1]
		bareBefore := slices.ContainsFunc(seq, func(i int) bool { return i < first && isBare(hops[i]) })
		bareAfter := slices.ContainsFunc(seq, func(i int) bool { return i > last && isBare(hops[i]) })
		if bareBefore == bareAfter {
			bareBefore, bareAfter = wrappedElsewhere(hops, first, last)
		}
		w := hops[first]
		switch {
		case bareBefore && !bareAfter:
			dev := tunnelDevice(hops, seq, first, -1)
			adds = append(adds, insertion{first, tunnelHop(w, trace.HopEncap, w.Packet.Outer.Type, w.Packet.Outer, dev, w.Iface)})
		case bareAfter && !bareBefore:
			w = hops[last]
			dev := tunnelDevice(hops, seq, last, +1)
			adds = append(adds, insertion{last + 1, tunnelHop(w, trace.HopDecap, w.Packet.Outer.Type, w.Packet.Outer, dev, w.Iface)})
		}
	}
	// Insert from the end, so that the indexes still to come hold; two
	// hops for the same place keep the order they were found in.
	slices.SortStableFunc(adds, func(a, b insertion) int { return a.before - b.before })
	out := slices.Clone(hops)
	for k := len(adds) - 1; k >= 0; k-- {
		out = slices.Insert(out, adds[k].before, adds[k].hop)
	}
	return out
}

// nodeSequences groups the indexes of the hops by node, netns and
// direction, each group in path order.
func nodeSequences(hops []trace.Hop) [][]int {
	type key struct {
		node, netns string
		dir         trace.Direction
	}
	at := map[key]int{}
	var seqs [][]int
	for i, h := range hops {
		k := key{h.Node, h.Netns, h.Direction}
		n, ok := at[k]
		if !ok {
			n = len(seqs)
			at[k] = n
			seqs = append(seqs, nil)
		}
		seqs[n] = append(seqs[n], i)
	}
	return seqs
}

// isWrapped reports whether h is a capture of the packet inside a tunnel.
func isWrapped(h trace.Hop) bool {
	return isCapture(h) && h.Packet != nil && h.Packet.Outer != nil
}

// isBare reports whether h saw the packet without an outer header.
func isBare(h trace.Hop) bool {
	return h.Packet != nil && h.Packet.Outer == nil && (isCapture(h) || h.Kind == trace.HopRule)
}

// wrappedElsewhere decides whether the wrapped hops first…last are the
// sender's or the receiver's by the other nodes that saw the same outer
// header: a later one makes them the sender's.
func wrappedElsewhere(hops []trace.Hop, first, last int) (sender, receiver bool) {
	w := hops[first]
	for i, h := range hops {
		if !isWrapped(h) || h.Node == w.Node || h.Direction != w.Direction || *h.Packet.Outer != *w.Packet.Outer {
			continue
		}
		if i > last {
			sender = true
		} else {
			receiver = true
		}
	}
	return sender, receiver
}

// outerOf returns the outer header that some node saw around the packet of
// direction dir, or nil.
func outerOf(hops []trace.Hop, dir trace.Direction) *trace.Tunnel {
	for _, h := range hops {
		if h.Direction == dir && isWrapped(h) {
			return h.Packet.Outer
		}
	}
	return nil
}

// tunnelDevice names the tunnel device next to the wrapped hop at index
// from (step -1: the bare capture before it, +1: after it): the interface
// the bare packet was captured on, or the device of the node's route
// lookup, or "".
func tunnelDevice(hops []trace.Hop, seq []int, from, step int) string {
	k := slices.Index(seq, from) + step
	if k >= 0 && k < len(seq) {
		if h := hops[seq[k]]; isCapture(h) && !isWrapped(h) && tunnelType(h.Iface) != "" {
			return h.Iface
		}
	}
	for _, i := range seq {
		if r := hops[i].Route; r != nil && tunnelType(r.Dev) != "" {
			return r.Dev
		}
	}
	return ""
}

// tunnelHop derives an encap or decap hop from the capture seen: typ is
// the tunnel type, outer the outer header when known, dev the tunnel device
// and nic the interface the wrapped packet was seen on.
func tunnelHop(seen trace.Hop, kind trace.HopKind, typ string, outer *trace.Tunnel, dev, nic string) trace.Hop {
	h := trace.Hop{
		Time:      seen.Time,
		Node:      seen.Node,
		Netns:     seen.Netns,
		Kind:      kind,
		Direction: seen.Direction,
		Iface:     dev,
		Source:    SourceName,
		Tunnel:    &trace.Tunnel{Type: typ},
	}
	if outer != nil {
		t := *outer
		h.Tunnel = &t
	}
	if seen.Packet != nil {
		p, outer := *seen.Packet, *h.Tunnel
		p.Outer = &outer
		h.Packet = &p
	}
	switch {
	case nic == "":
		h.Note = "from the capture on " + seen.Iface
	case kind == trace.HopEncap:
		h.Note = "sent wrapped on " + nic
	default:
		h.Note = "received wrapped on " + nic
	}
	if h.Iface == "" {
		h.Iface = nic
	}
	return h
}
