package render

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/correlate"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// style is how a piece of a line is shown: an ANSI colour in the table, a
// CSS class in HTML.
type style int

const (
	plain style = iota
	styleNode
	styleDrop
	styleAccept
	styleNAT
	styleTunnel
	styleHeader
	styleDim
)

// segment is a piece of a line in one style.
type segment struct {
	text  string
	style style
}

// line is one group of hops, as one line of the table and one arrow of the
// diagrams: a single hop, or a walk of consecutive rule hops through one
// table with the NAT they did.
type line struct {
	hops []trace.Hop
	segs []segment
}

func (l line) first() trace.Hop { return l.hops[0] }

// text is the line without styles and without its node.
func (l line) text() string { return plainText(l.segs) }

// plainText joins the text of segments.
func plainText(segs []segment) string {
	var b strings.Builder
	for _, s := range segs {
		b.WriteString(s.text)
	}
	return b.String()
}

// lines groups the hops of p into lines.
func lines(p trace.Path) []line {
	var out []line
	for i := 0; i < len(p.Hops); {
		n := 1
		if p.Hops[i].Kind == trace.HopRule && p.Hops[i].Rule != nil {
			n = walkLength(p.Hops[i:])
		}
		out = append(out, describe(p.Hops[i:i+n]))
		i += n
	}
	return out
}

// builtinChains are the chains iptables hooks; a walk starts at one of them.
var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// walkLength counts the hops of the walk that starts hops: the rule hops of
// one stack, direction and table until a verdict ends the walk or another
// built-in chain starts one, and the NAT hops attributed to them.
func walkLength(hops []trace.Hop) int {
	first := hops[0]
	base := first.Rule.Chain
	n := 1
	for ; n < len(hops); n++ {
		h, prev := hops[n], hops[n-1]
		if h.Kind == trace.HopNAT && h.NAT != nil && h.Node == first.Node && prev.Rule != nil && h.NAT.ByChain == prev.Rule.Chain {
			continue
		}
		if h.Kind != trace.HopRule || h.Rule == nil || prev.Rule == nil || h.Node != first.Node || h.Netns != first.Netns ||
			h.Direction != first.Direction || h.Rule.Table != first.Rule.Table || ends(prev.Rule) ||
			(builtinChains[h.Rule.Chain] && h.Rule.Chain != base) {
			break
		}
	}
	return n
}

// ends reports whether a rule's verdict ends the walk of its table.
func ends(r *trace.Rule) bool {
	if r.Type == "policy" {
		return true
	}
	switch r.Verdict {
	case "accept", "drop", "queue":
		return true
	}
	return false
}

// describe writes the segments of a group of hops.
func describe(hops []trace.Hop) line {
	l := line{hops: hops}
	h := hops[0]
	add := func(text string, s style) { l.segs = append(l.segs, segment{text, s}) }
	switch {
	case h.Kind == trace.HopRule && h.Rule != nil:
		add(h.Rule.Table+" ", plain)
		walk(hops, add)
	case h.Kind == trace.HopNAT && h.NAT != nil:
		add("conntrack ", plain)
		add(rewrite(h.NAT), styleNAT)
		if h.NAT.ByChain == "" {
			add(" (no rule hop did it: the nat table was not traced)", styleDim)
		} else {
			add(" by "+h.NAT.ByChain, plain)
		}
	case h.Kind == trace.HopRoute && h.Route != nil:
		add("route "+h.Route.Text, plain)
		if discards(h.Route) {
			l.segs[len(l.segs)-1].style = styleDrop
		}
		note(h.Note, add)
	case (h.Kind == trace.HopEncap || h.Kind == trace.HopDecap) && h.Tunnel != nil:
		add(place(h)+" ", plain)
		add(tunnel(h), styleTunnel)
		note(h.Note, add)
	case h.Kind == trace.HopDeliver:
		add(place(h)+" → ", plain)
		if h.Netns != "" && h.Note == "delivered to "+h.Netns {
			add("delivered", styleAccept) // the place names the pod already
		} else {
			add(h.Note, styleAccept)
		}
	default:
		add(strings.TrimSpace(place(h)+" "+string(h.Way))+" → ", plain)
		add(observed(h), plain)
		if h.Kind == trace.HopDrop {
			l.segs[len(l.segs)-1].style = styleDrop
		}
		note(h.Note, add)
	}
	return l
}

func note(n string, add func(string, style)) {
	if n != "" {
		add(" ("+n+")", styleDim)
	}
}

// walk writes a rule walk: "PREROUTING #1 → KUBE-SERVICES #3 "comment" →
// … → KUBE-SEP-… #2 DNAT a → b".
func walk(hops []trace.Hop, add func(string, style)) {
	for i, h := range hops {
		if h.Rule == nil {
			continue // a NAT hop, written with its rule
		}
		r := h.Rule
		if i > 0 {
			add(" → ", plain)
		}
		var nats []*trace.NAT
		var next *trace.Rule
		for _, n := range hops[i+1:] {
			if n.Rule != nil {
				next = n.Rule
				break
			}
			nats = append(nats, n.NAT)
		}
		switch r.Type {
		case "policy":
			add(r.Chain+" policy ", plain)
			add(correlate.Target(r), verdictStyle(r))
			continue
		case "return":
			add(r.Chain+" return", plain)
			continue
		}
		at := " #" + strconv.Itoa(r.Number)
		if r.Number == 0 {
			at = " handle " + strconv.FormatUint(r.Handle, 10)
		}
		add(r.Chain+at, plain)
		if c := correlate.Comment(r); c != "" && !strings.HasPrefix(c, "cali:") {
			add(fmt.Sprintf(" %q", c), styleDim)
		}
		if p := probability(r.Text); p != "" {
			add(" (p="+p+")", plain)
		}
		target := correlate.Target(r)
		jump := strings.HasPrefix(r.Verdict, "jump ") || strings.HasPrefix(r.Verdict, "goto ")
		switch {
		case len(nats) > 0:
			for _, n := range nats {
				add(" "+target+" "+rewrite(n), styleNAT)
			}
		case jump && next != nil && next.Chain == target:
		case jump:
			add(" "+r.Verdict, plain)
		case target != "":
			add(" "+target, verdictStyle(r))
		}
	}
}

// verdictStyle colours a rule's target by what it did.
func verdictStyle(r *trace.Rule) style {
	switch r.Verdict {
	case "drop":
		return styleDrop
	case "accept":
		return styleAccept
	}
	return plain
}

// probability returns the --probability of a statistic match, shortened
// ("0.333"), or "".
func probability(rule string) string {
	words := ruleset.SplitRule(rule)
	for i := 0; i+1 < len(words); i++ {
		if words[i] == "--probability" {
			if p, err := strconv.ParseFloat(words[i+1], 64); err == nil {
				return strconv.FormatFloat(p, 'g', 3, 64)
			}
			return words[i+1]
		}
	}
	return ""
}

// rewrite writes a NAT as "10.104.209.155:80 → 172.16.184.2:80".
func rewrite(n *trace.NAT) string {
	return fmt.Sprintf("%s → %s", n.From, n.To)
}

// place is where a hop was seen: the netns label, if any, and the
// interface.
func place(h trace.Hop) string {
	return strings.TrimSpace(h.Netns + " " + h.Iface)
}

// tunnel writes an encap or decap: "IPIP 192.168.10.101 → 192.168.10.102".
func tunnel(h trace.Hop) string {
	t := h.Tunnel
	s := strings.ToUpper(t.Type)
	if t.VNI != 0 {
		s += fmt.Sprintf(" vni %d", t.VNI)
	}
	if h.Kind == trace.HopDecap {
		s += " decap"
	}
	switch {
	case t.Src.IsValid() && t.Dst.IsValid():
		s += fmt.Sprintf(" %s → %s", t.Src, t.Dst)
	case t.Dst.IsValid():
		s += " → " + t.Dst.String()
	}
	return s
}

// discards reports whether a route drops what it matches.
func discards(r *trace.Route) bool {
	switch r.Type {
	case "blackhole", "unreachable", "prohibit":
		return true
	}
	return false
}

// observed writes what a capture saw: an ARP message, or the packet's
// headers, with a DNS message after them.
func observed(h trace.Hop) string {
	switch {
	case h.ARP != nil:
		a := h.ARP
		if a.Op == "reply" {
			return fmt.Sprintf("ARP %s is-at %s", a.SenderIP, a.SenderMAC)
		}
		return fmt.Sprintf("ARP who-has %s tell %s", a.TargetIP, a.SenderIP)
	case h.Packet != nil:
		s := packet(h.Packet)
		if h.DNS != nil {
			s += ": " + dns(h.DNS)
		}
		return s
	}
	return string(h.Kind)
}

// packet writes headers the way tcpdump would summarise them:
// "tcp 172.16.158.16:40001 > 10.104.209.155:80 S ttl 64".
func packet(p *trace.Packet) string {
	var b strings.Builder
	if o := p.Outer; o != nil {
		b.WriteString(o.Type)
		if o.VNI != 0 {
			fmt.Fprintf(&b, " vni %d", o.VNI)
		}
		fmt.Fprintf(&b, " %s > %s: ", o.Src, o.Dst)
	}
	ends := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
	switch p.Proto {
	case trace.TCP:
		fmt.Fprintf(&b, "tcp %s > %s %s", ends(p.Src, p.SrcPort), ends(p.Dst, p.DstPort), p.TCPFlags)
	case trace.UDP:
		fmt.Fprintf(&b, "udp %s > %s", ends(p.Src, p.SrcPort), ends(p.Dst, p.DstPort))
	case trace.ICMP:
		fmt.Fprintf(&b, "icmp %s %s > %s", icmpName(p.ICMPType, p.ICMPCode), p.Src, p.Dst)
		if p.ICMPType == 0 || p.ICMPType == 8 {
			fmt.Fprintf(&b, " id %d seq %d", p.ICMPID, p.ICMPSeq)
		}
	default:
		fmt.Fprintf(&b, "ip %s > %s", p.Src, p.Dst)
	}
	if p.TTL != 0 {
		fmt.Fprintf(&b, " ttl %d", p.TTL)
	}
	return b.String()
}

// icmpName names the ICMP types a trace meets.
func icmpName(typ, code uint8) string {
	switch typ {
	case 0:
		return "echo reply"
	case 8:
		return "echo request"
	case 3:
		return "unreachable"
	case 11:
		return "time exceeded"
	}
	return fmt.Sprintf("type %d code %d", typ, code)
}

// dns writes a DNS message: "query A kubernetes.default.svc.cluster.local."
// or "answer NOERROR A 10.96.0.1".
func dns(m *trace.DNS) string {
	if !m.Response {
		return fmt.Sprintf("DNS query %s %s", m.Type, m.Question)
	}
	s := fmt.Sprintf("DNS answer %s %s %s %s", m.Rcode, m.Type, m.Question, strings.Join(m.Answers, ", "))
	return strings.TrimSpace(s)
}

// verdictLine writes the verdict: "verdict: dropped at [k8s-w1] filter
// FORWARD policy DROP: no rule …".
func verdictLine(v trace.Verdict) []segment {
	s := style(styleAccept)
	switch v.Result {
	case trace.Dropped:
		s = styleDrop
	case trace.NoAnswer:
		s = styleTunnel
	}
	segs := []segment{{"verdict: ", styleHeader}, {string(v.Result), s}}
	if v.Where != "" {
		at := v.Where
		if v.Node != "" {
			at = "[" + v.Node + "] " + at
		}
		segs = append(segs, segment{" at " + at, plain})
	}
	if v.Reason != "" {
		segs = append(segs, segment{": " + v.Reason, plain})
	}
	return segs
}

// lossLine writes one loss: "lost: 37 events of capture on k8s-w2: …".
func lossLine(l trace.Loss) []segment {
	return []segment{{"lost: ", styleHeader}, {fmt.Sprintf("%d events of %s on %s: %s", l.Count, l.Source, l.Node, l.Detail), styleTunnel}}
}
