package correlate

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// retransmitGap separates transmissions: two sightings of the flow's packet
// further apart than this are a packet and its retransmission. TCP waits at
// least 200ms (its minimum retransmission timeout) before sending again,
// while one packet crosses a cluster in well under a millisecond, plus the
// few milliseconds by which node clocks may differ.
const retransmitGap = 200 * time.Millisecond

// causalGap is the least time put between a packet leaving one node and
// arriving at the next when their clocks have to be corrected.
const causalGap = time.Microsecond

// entry is a hop with what ordering needs to know of it.
type entry struct {
	hop trace.Hop
	// index is the hop's position in the input, the last tie-break.
	index int
	// tx is the transmission the hop belongs to: 0 for the first packet,
	// 1 for its first retransmission, and so on.
	tx int
	// hook is the netfilter hook a rule hop was met in (hookPrerouting …).
	hook int
	// at and sub are the hop's place in its node's sequence: at on the
	// node's own clock, sub among hops placed at the same time.
	at  time.Time
	sub int
}

// order puts the hops in the order the packet met them: the request, then
// the reply; within each, the first transmission, then retransmissions; and
// within a transmission, along the way from node to node.
//
// Captures carry the kernel's timestamps, but rule hops carry the time the
// tracer read them, later than the packet went by. So within a node the
// rule hops of one pass through a network stack are sorted by hook and
// table and placed, as a block, right after the capture of the packet
// entering that stack (or right before the one of it leaving). Nodes' clocks
// may differ by milliseconds, so each node's times are shifted by the
// offset clockOffsets estimates from the order the TTL gives. Route hops
// are lookups, whose time says nothing: each goes where the kernel routes,
// after the PREROUTING rules.
func order(id identity, hops []trace.Hop) []trace.Hop {
	tx := transmissions(id, hops)
	var entries, routes []entry
	for i, h := range hops {
		e := entry{hop: h, index: i, tx: tx[i], at: h.Time}
		if h.Kind == trace.HopRoute {
			routes = append(routes, e)
			continue
		}
		entries = append(entries, e)
	}
	assignHooks(entries)
	placeRuleBlocks(entries)
	keepNATInStack(entries)

	offsets := clockOffsets(entries)
	for i := range entries {
		off := offsets[entries[i].hop.Node]
		entries[i].at = entries[i].at.Add(off)
		entries[i].hop.Time = entries[i].hop.Time.Add(off)
	}
	slices.SortStableFunc(entries, func(a, b entry) int {
		return cmp.Or(
			cmp.Compare(directionRank(a.hop.Direction), directionRank(b.hop.Direction)),
			cmp.Compare(a.tx, b.tx),
			a.at.Compare(b.at),
			cmp.Compare(a.sub, b.sub),
			cmp.Compare(a.index, b.index))
	})
	for _, r := range routes {
		r.hop.Time = r.hop.Time.Add(offsets[r.hop.Node])
		entries = slices.Insert(entries, routePosition(entries, r.hop), r)
	}
	out := make([]trace.Hop, len(entries))
	for i, e := range entries {
		out[i] = e.hop
	}
	return out
}

func directionRank(d trace.Direction) int {
	if d == trace.Reply {
		return 1
	}
	return 0
}

// isCapture reports whether h is a packet seen on an interface, with the
// kernel's timestamp.
func isCapture(h trace.Hop) bool {
	switch h.Kind {
	case trace.HopInterface, trace.HopARP, trace.HopDNS:
		return true
	}
	return false
}

// transmissions numbers the transmissions of each direction: the sightings
// of the flow's packet (captures and rule hops), sorted by time, start a new
// transmission after a gap longer than retransmitGap. Hops that do not see
// the flow's packet itself (ARP, NAT, route lookups, other DNS messages)
// belong to the first.
func transmissions(id identity, hops []trace.Hop) []int {
	tx := make([]int, len(hops))
	for _, d := range []trace.Direction{trace.Request, trace.Reply} {
		var seen []int
		for i, h := range hops {
			if h.Direction == d && h.Kind != trace.HopARP && h.Packet != nil && id.direction(h.Packet) == d {
				seen = append(seen, i)
			}
		}
		slices.SortStableFunc(seen, func(a, b int) int { return hops[a].Time.Compare(hops[b].Time) })
		n := 0
		for k, i := range seen {
			if k > 0 && hops[i].Time.Sub(hops[seen[k-1]].Time) > retransmitGap {
				n++
			}
			tx[i] = n
		}
	}
	return tx
}

// Hook ranks, in the order a packet meets the hooks: routing comes between
// PREROUTING (or OUTPUT) and INPUT or FORWARD.
const (
	hookPrerouting = iota
	hookRouting
	hookForward
	hookPostrouting
)

// hookOf tells the hook a chain belongs to by its name: the built-in chains,
// the nf_tables base chains that kube-proxy and most rulesets name after
// their hook ("nat-prerouting"), and the chains named after the hook that
// jumps to them (cali-FORWARD, KUBE-POSTROUTING).
func hookOf(chain string) (int, bool) {
	c := strings.ToLower(chain)
	switch {
	case strings.Contains(c, "postrouting"):
		return hookPostrouting, true
	case strings.Contains(c, "prerouting"), strings.Contains(c, "output"):
		return hookPrerouting, true
	case strings.Contains(c, "forward"), strings.Contains(c, "input"):
		return hookForward, true
	}
	return 0, false
}

// assignHooks sets the hook of every rule hop: its chain's, or for a chain
// that does not tell, that of the rule the tracer read before it in the
// same stack and table, the one that jumped to it.
func assignHooks(entries []entry) {
	type walk struct {
		node, netns, table string
		dir                trace.Direction
		tx                 int
	}
	byArrival := rulesByArrival(entries)
	last := map[walk]int{}
	for _, i := range byArrival {
		h := entries[i].hop
		w := walk{h.Node, h.Netns, h.Rule.Table, h.Direction, entries[i].tx}
		hook, ok := hookOf(h.Rule.Chain)
		if !ok {
			hook = last[w]
		}
		entries[i].hook = hook
		last[w] = hook
	}
}

// rulesByArrival returns the indexes of the rule hops in the order the
// tracer read them.
func rulesByArrival(entries []entry) []int {
	var rules []int
	for i, e := range entries {
		if e.hop.Kind == trace.HopRule && e.hop.Rule != nil {
			rules = append(rules, i)
		}
	}
	slices.SortStableFunc(rules, func(a, b int) int { return entries[a].hop.Time.Compare(entries[b].hop.Time) })
	return rules
}

// tablePriority is the priority iptables registers a table at on a hook;
// nat does DNAT before filter and SNAT after it. Other tables count as 0.
func tablePriority(table string, hook int) int {
	switch table {
	case "raw":
		return -300
	case "mangle":
		return -150
	case "nat":
		if hook == hookPrerouting {
			return -100
		}
		return 100
	case "security":
		return 50
	}
	return 0
}

// stack is one pass of one packet through one network stack.
type stack struct {
	node, netns string
	dir         trace.Direction
	tx          int
}

func stackOf(e entry) stack { return stack{e.hop.Node, e.hop.Netns, e.hop.Direction, e.tx} }

// placeRuleBlocks places the rule hops of each stack, sorted by hook, table
// priority and arrival, as one block anchored to the capture of the packet
// entering the stack: the one on the interface the first rule names as
// input, with the TTL the packet had before forwarding. Without one, the
// block goes right before the capture of the packet leaving by the last
// rule's output interface, or else right before its first capture in
// another namespace of the node, and without any at the time the first
// rule was read.
func placeRuleBlocks(entries []entry) {
	blocks := map[stack][]int{}
	var stacks []stack
	for _, i := range rulesByArrival(entries) {
		s := stackOf(entries[i])
		if _, ok := blocks[s]; !ok {
			stacks = append(stacks, s)
		}
		blocks[s] = append(blocks[s], i)
	}
	for _, s := range stacks {
		block := blocks[s]
		firstRead := entries[block[0]].hop.Time
		slices.SortStableFunc(block, func(a, b int) int {
			ea, eb := entries[a], entries[b]
			return cmp.Or(
				cmp.Compare(ea.hook, eb.hook),
				cmp.Compare(tablePriority(ea.hop.Rule.Table, ea.hook), tablePriority(eb.hop.Rule.Table, eb.hook)))
		})
		at, sub := firstRead, 1
		if in, ok := ingressCapture(entries, s, block, firstRead); ok {
			at = entries[in].at
		} else if out, ok := egressCapture(entries, s, block); ok {
			at, sub = entries[out].at, -len(block)
		} else if next, ok := nextNamespaceCapture(entries, s); ok {
			at, sub = entries[next].at, -len(block)
		}
		for k, i := range block {
			entries[i].at, entries[i].sub = at, sub+k
		}
	}
}

// ingressCapture finds the capture of the packet entering stack s before
// the rules of block were read.
func ingressCapture(entries []entry, s stack, block []int, firstRead time.Time) (int, bool) {
	for _, i := range block {
		e := entries[i]
		if e.hop.Rule.InIface == "" {
			continue
		}
		ttl := packetTTL(e.hop)
		if ttl != 0 && e.hook > hookRouting {
			ttl++ // forwarding lowered it before the FORWARD hook
		}
		return closestCapture(entries, s, e.hop.Rule.InIface, ttl, firstRead, true)
	}
	return 0, false
}

// egressCapture finds the capture of the packet leaving stack s after the
// rules of block.
func egressCapture(entries []entry, s stack, block []int) (int, bool) {
	for k := len(block) - 1; k >= 0; k-- {
		if r := entries[block[k]].hop; r.Rule.OutIface != "" {
			return closestCapture(entries, s, r.Rule.OutIface, packetTTL(r), r.Time, false)
		}
	}
	return 0, false
}

// nextNamespaceCapture finds, for a stack that captured nothing of its
// packet (a reset the node sent that left by a veth captured inbound only),
// the first capture of the packet in another namespace of the same node:
// the veth's other end, where it arrived.
func nextNamespaceCapture(entries []entry, s stack) (int, bool) {
	best, found := 0, false
	for i, e := range entries {
		c := stackOf(e)
		if !isCapture(e.hop) || c.node != s.node || c.netns == s.netns || c.dir != s.dir || c.tx != s.tx {
			continue
		}
		if !found || e.at.Before(entries[best].at) {
			best, found = i, true
		}
	}
	return best, found
}

// closestCapture finds a capture of the packet itself (not wrapped in a
// tunnel, which netfilter sees as another packet) in stack s on iface with
// the TTL ttl (0, unknown, matches any): the latest one before ref when
// before is set, else the earliest after it; failing that, the nearest on
// the other side.
func closestCapture(entries []entry, s stack, iface string, ttl uint8, ref time.Time, before bool) (int, bool) {
	best, found := 0, false
	for i, e := range entries {
		p := e.hop.Packet
		if !isCapture(e.hop) || stackOf(e) != s || e.hop.Iface != iface || p == nil || p.Outer != nil {
			continue
		}
		if ttl != 0 && p.TTL != 0 && p.TTL != ttl {
			continue
		}
		if !found || closer(e.at, entries[best].at, ref, before) {
			best, found = i, true
		}
	}
	return best, found
}

// closer reports whether a is a better anchor than b for a block read at
// ref: on the wanted side of ref and nearer to it.
func closer(a, b, ref time.Time, before bool) bool {
	aSide, bSide := !a.After(ref), !b.After(ref)
	if !before {
		aSide, bSide = !a.Before(ref), !b.Before(ref)
	}
	if aSide != bSide {
		return aSide
	}
	da, db := a.Sub(ref).Abs(), b.Sub(ref).Abs()
	return da < db
}

// keepNATInStack keeps each NAT hop in the pass of the packet through its
// node: conntrack may report the rewrite, with the time it read the event,
// after the packet has left. Such a hop goes right before the last capture
// of the pass.
func keepNATInStack(entries []entry) {
	for i, e := range entries {
		if e.hop.Kind != trace.HopNAT {
			continue
		}
		last := -1
		for j, c := range entries {
			if isCapture(c.hop) && stackOf(c) == stackOf(e) && (last < 0 || c.at.After(entries[last].at)) {
				last = j
			}
		}
		if last >= 0 && e.at.After(entries[last].at) {
			entries[i].at, entries[i].sub = entries[last].at, -1
		}
	}
}

func packetTTL(h trace.Hop) uint8 {
	if h.Packet == nil {
		return 0
	}
	return h.Packet.TTL
}

// routePosition says where a route lookup goes in the ordered entries: in
// its node's first pass of its direction, after the PREROUTING (or OUTPUT)
// rules, or else before the rules of the later hooks, or else after the
// capture on the interface the packet came in by, or else before the one on
// the interface the route sends it out of, or else after the node's last
// hop. A lookup for a node where nothing was seen goes at the end of its
// direction.
func routePosition(entries []entry, r trace.Hop) int {
	firstTx := -1
	var mine []int
	for i, e := range entries {
		h := e.hop
		if h.Node != r.Node || h.Netns != r.Netns || h.Direction != r.Direction {
			continue
		}
		if firstTx < 0 {
			firstTx = e.tx
		}
		if e.tx == firstTx {
			mine = append(mine, i)
		}
	}
	if len(mine) == 0 {
		end := 0
		for i, e := range entries {
			if directionRank(e.hop.Direction) <= directionRank(r.Direction) {
				end = i + 1
			}
		}
		return end
	}
	after := func(i int) int {
		// Keep lookups in the order they came.
		for i+1 < len(entries) && entries[i+1].hop.Kind == trace.HopRoute && entries[i+1].hop.Node == r.Node {
			i++
		}
		return i + 1
	}
	isRule := func(i int) bool { return entries[i].hop.Kind == trace.HopRule }
	if k := lastIndexFunc(mine, func(i int) bool { return isRule(i) && entries[i].hook == hookPrerouting }); k >= 0 {
		return after(mine[k])
	}
	if k := slices.IndexFunc(mine, func(i int) bool { return isRule(i) && entries[i].hook > hookRouting }); k >= 0 {
		return mine[k]
	}
	if r.Iface != "" {
		if k := slices.IndexFunc(mine, func(i int) bool { return isCapture(entries[i].hop) && entries[i].hop.Iface == r.Iface }); k >= 0 {
			return after(mine[k])
		}
	}
	if r.Route != nil && r.Route.Dev != "" {
		if k := slices.IndexFunc(mine, func(i int) bool { return isCapture(entries[i].hop) && entries[i].hop.Iface == r.Route.Dev }); k >= 0 {
			return mine[k]
		}
	}
	return after(mine[len(mine)-1])
}

func lastIndexFunc(s []int, f func(int) bool) int {
	for k := len(s) - 1; k >= 0; k-- {
		if f(s[k]) {
			return k
		}
	}
	return -1
}
