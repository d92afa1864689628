package correlate

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// judge says how the path ended, checking in this order:
//   - dropped: the request's last hop stopped it (a DROP or REJECT rule, a
//     chain policy that drops, a blackhole, unreachable or prohibit route);
//     Where names it and Reason says why, from the rule's comment when it
//     has one;
//   - dropped: the probe was refused or got an ICMP error, and the hops do
//     not say where; Where is then the first place the answer was seen;
//   - replied: the probe got its answer, or a reply, its NAT undone, was
//     seen on its way to the client;
//   - delivered: the request was delivered and no reply was seen;
//   - no-answer: nothing came back; Where is the last place the request was
//     seen.
//
// Lost events are mentioned in the reason when the path may have a gap
// where the answer would be: for every result but a reply or a drop by a
// rule or route.
func judge(flow trace.Flow, hops []trace.Hop, answer *Answer, lost []trace.Loss) trace.Verdict {
	last, firstReply, deliver := -1, -1, -1
	replied := false
	for i, h := range hops {
		switch {
		case h.Direction == trace.Request && h.Kind == trace.HopDeliver:
			deliver = i
			last = i
		case h.Direction == trace.Request && h.Kind != trace.HopNAT && h.Kind != trace.HopARP && h.Kind != trace.HopDNS:
			last = i
		case h.Direction == trace.Reply:
			if firstReply < 0 {
				firstReply = i
			}
			replied = replied || reachesClient(flow, h)
		}
	}
	if last >= 0 && stopsHere(hops[last]) {
		return stopped(hops[last])
	}
	if answer != nil && answer.Result == trace.Dropped {
		v := trace.Verdict{Result: trace.Dropped, Reason: answer.Reply}
		if firstReply >= 0 {
			v.Node, v.Where = hops[firstReply].Node, placeOf(hops[firstReply])
		}
		v.Reason = withLosses(v.Reason, lost)
		return v
	}
	if replied || (answer != nil && answer.Result == trace.Replied) {
		v := trace.Verdict{Result: trace.Replied, Reason: "the reply reached " + flow.Src.String()}
		if answer != nil && answer.Reply != "" {
			v.Reason = answer.Reply
		}
		return v
	}
	waited := ""
	if answer != nil && answer.Reply != "" {
		waited = " (" + answer.Reply + ")"
	}
	if deliver >= 0 {
		d := hops[deliver]
		return trace.Verdict{Result: trace.Delivered, Node: d.Node, Where: placeOf(d),
			Reason: withLosses(strings.TrimPrefix(d.Note, "delivered to ")+" got the request but no reply was seen"+waited, lost)}
	}
	if last < 0 {
		return trace.Verdict{Result: trace.NoAnswer, Reason: withLosses("nothing of the request was seen"+waited, lost)}
	}
	l := hops[last]
	return trace.Verdict{Result: trace.NoAnswer, Node: l.Node, Where: placeOf(l),
		Reason: withLosses("the request was last seen at "+placeOf(l)+" and nothing came back"+waited, lost)}
}

// reachesClient reports whether a reply hop carries the reply back to the
// client with the NAT undone: addressed to the flow's source.
func reachesClient(flow trace.Flow, h trace.Hop) bool {
	p := h.Packet
	if p == nil || p.Dst != flow.Src {
		return false
	}
	return flow.Proto == trace.ICMP || p.Proto == trace.ICMP || p.DstPort == flow.SrcPort
}

// stopped is the verdict for a path that a rule, route or drop ended.
func stopped(h trace.Hop) trace.Verdict {
	v := trace.Verdict{Result: trace.Dropped, Node: h.Node, Where: placeOf(h)}
	switch {
	case h.Rule != nil:
		r := h.Rule
		switch {
		case Comment(r) != "":
			v.Reason = Comment(r)
		case r.Type == "policy":
			v.Reason = fmt.Sprintf("no rule of %s %s accepted the packet and the chain's policy is %s", r.Table, r.Chain, Target(r))
		case r.Text != "":
			v.Reason = "it matched " + r.Text
		default:
			v.Reason = "the rule's verdict is " + r.Verdict
		}
	case h.Route != nil:
		v.Reason = fmt.Sprintf("%s is a %s route: %s", h.Route.Dst, h.Route.Type, routeEffect(h.Route.Type))
	default:
		v.Reason = h.Note
	}
	return v
}

// routeEffect says what the kernel does with a packet whose route has a
// discarding type.
func routeEffect(typ string) string {
	switch typ {
	case "unreachable":
		return "the kernel answers host unreachable"
	case "prohibit":
		return "the kernel answers administratively prohibited"
	}
	return "the kernel discards the packet silently"
}

// placeOf names where a hop happened, without its node: the rule
// ("filter KUBE-SERVICES #3 REJECT", "filter FORWARD policy DROP"), the
// route ("route blackhole 172.16.158.0/24 proto bird") or the interface,
// prefixed with the netns label when it is not the node's own
// ("client eth0").
func placeOf(h trace.Hop) string {
	switch {
	case h.Rule != nil:
		r := h.Rule
		switch r.Type {
		case "policy":
			return fmt.Sprintf("%s %s policy %s", r.Table, r.Chain, Target(r))
		case "return":
			return fmt.Sprintf("%s %s return", r.Table, r.Chain)
		}
		at := "#" + strconv.Itoa(r.Number)
		if r.Number == 0 {
			at = "handle " + strconv.FormatUint(r.Handle, 10)
		}
		return strings.TrimSpace(fmt.Sprintf("%s %s %s %s", r.Table, r.Chain, at, Target(r)))
	case h.Route != nil:
		return "route " + h.Route.Text
	}
	return strings.TrimSpace(h.Netns + " " + h.Iface)
}

// withLosses adds the lost events to a reason, as they may hide the rest of
// the path.
func withLosses(reason string, lost []trace.Loss) string {
	if len(lost) == 0 {
		return reason
	}
	total := 0
	var where []string
	for _, l := range lost {
		total += l.Count
		if w := l.Node + " " + l.Source; !slices.Contains(where, w) {
			where = append(where, w)
		}
	}
	return fmt.Sprintf("%s; %d events were lost (%s), which may hide the rest of the path",
		reason, total, strings.Join(where, ", "))
}
