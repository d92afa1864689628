package correlate

import (
	"cmp"
	"slices"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// ttlSpan is what the captures of one node saw of the first transmission of
// one direction: the highest and lowest TTL, and when.
type ttlSpan struct {
	maxTTL, minTTL uint8
	first, last    time.Time
}

// offsetBound bounds off(later) - off(earlier) for a pair of nodes, the
// amounts to add to their times.
type offsetBound struct {
	lo, hi       time.Duration
	hasLo, hasHi bool
}

// value picks the offset: none when the clocks already agree with the
// bounds, the middle of the window when both directions bound it (as NTP
// does, taking the two legs to be equally long), else the least shift that
// honours the one bound there is.
func (b offsetBound) value() time.Duration {
	switch {
	case b.hasLo && b.hasHi:
		if b.lo <= 0 && 0 <= b.hi {
			return 0
		}
		return (b.lo + b.hi) / 2
	case b.hasLo:
		return max(b.lo, 0)
	case b.hasHi:
		return min(b.hi, 0)
	}
	return 0
}

// nodePair is a pair of node names in lexical order.
type nodePair struct{ a, b string }

// clockOffsets estimates what to add to each node's times to bring them
// onto the clock of the node where the request starts. Along one direction
// the TTL only goes down, by one per routing node; an IPIP or VXLAN packet
// keeps its inner TTL across the tunnel, but the sender's captures also saw
// it before forwarding, with a higher TTL. So the nodes that captured the
// first transmission, sorted by their highest and then their lowest TTL,
// are the order the packet crossed them, and everything a node saw of it
// happened before what the next one saw: that bounds the difference of
// their clocks from below; the reply, crossing the other way, bounds it
// from above. Rule hops, stamped when the tracer read them, are left out.
func clockOffsets(entries []entry) map[string]time.Duration {
	bounds := map[nodePair]*offsetBound{}
	var reference string
	for _, d := range []trace.Direction{trace.Request, trace.Reply} {
		nodes := nodeOrder(entries, d)
		switch {
		case d == trace.Request && len(nodes) > 0:
			reference = nodes[0].name
		case reference == "" && len(nodes) > 0:
			reference = nodes[len(nodes)-1].name
		}
		for k := 0; k+1 < len(nodes); k++ {
			early, late := nodes[k], nodes[k+1]
			if early.maxTTL == late.maxTTL && early.minTTL == late.minTTL {
				continue // no telling which came first
			}
			need := early.last.Sub(late.first) + causalGap
			p, flip := nodePair{early.name, late.name}, false
			if p.a > p.b {
				p, flip = nodePair{p.b, p.a}, true
			}
			b := bounds[p]
			if b == nil {
				b = &offsetBound{}
				bounds[p] = b
			}
			// off(late) - off(early) >= need; flipped, off(early) - off(late) <= -need.
			switch {
			case !flip && (!b.hasLo || need > b.lo):
				b.lo, b.hasLo = need, true
			case flip && (!b.hasHi || -need < b.hi):
				b.hi, b.hasHi = -need, true
			}
		}
	}
	return propagate(reference, bounds)
}

// namedSpan is a node's ttlSpan with its name.
type namedSpan struct {
	name string
	ttlSpan
}

// nodeOrder sorts the nodes whose captures saw the first transmission of
// direction d in the order the TTL says the packet crossed them.
func nodeOrder(entries []entry, d trace.Direction) []namedSpan {
	spans := map[string]*ttlSpan{}
	var names []string
	for _, e := range entries {
		h := e.hop
		if h.Direction != d || e.tx != 0 || !isCapture(h) || h.Packet == nil || h.Packet.TTL == 0 {
			continue
		}
		s, ok := spans[h.Node]
		if !ok {
			s = &ttlSpan{maxTTL: h.Packet.TTL, minTTL: h.Packet.TTL, first: h.Time, last: h.Time}
			spans[h.Node] = s
			names = append(names, h.Node)
		}
		s.maxTTL, s.minTTL = max(s.maxTTL, h.Packet.TTL), min(s.minTTL, h.Packet.TTL)
		if h.Time.Before(s.first) {
			s.first = h.Time
		}
		if h.Time.After(s.last) {
			s.last = h.Time
		}
	}
	nodes := make([]namedSpan, len(names))
	for i, n := range names {
		nodes[i] = namedSpan{n, *spans[n]}
	}
	slices.SortStableFunc(nodes, func(x, y namedSpan) int {
		return cmp.Or(cmp.Compare(y.maxTTL, x.maxTTL), cmp.Compare(y.minTTL, x.minTTL))
	})
	return nodes
}

// propagate turns the pairwise offsets into one offset per node, walking
// from the reference node, whose offset is zero.
func propagate(reference string, bounds map[nodePair]*offsetBound) map[string]time.Duration {
	offsets := map[string]time.Duration{reference: 0}
	queue := []string{reference}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		pairs := make([]nodePair, 0, len(bounds))
		for p := range bounds {
			pairs = append(pairs, p)
		}
		slices.SortFunc(pairs, func(x, y nodePair) int { return cmp.Or(cmp.Compare(x.a, y.a), cmp.Compare(x.b, y.b)) })
		for _, p := range pairs {
			v := bounds[p].value() // off(b) - off(a)
			switch {
			case p.a == n:
				if _, done := offsets[p.b]; !done {
					offsets[p.b] = offsets[n] + v
					queue = append(queue, p.b)
				}
			case p.b == n:
				if _, done := offsets[p.a]; !done {
					offsets[p.a] = offsets[n] - v
					queue = append(queue, p.a)
				}
			}
		}
	}
	return offsets
}
