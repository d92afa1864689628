package correlate

import (
	"net/netip"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// attributeNAT places each conntrack rewrite right after the rule hop that
// made it, and names that rule in it: for a DNAT, a rule in the same stack
// whose target is DNAT or REDIRECT and that saw the packet still addressed
// to the rewritten destination (KUBE-SEP-… for a service); for an SNAT, one
// whose target is SNAT or MASQUERADE and that saw the original source
// (KUBE-POSTROUTING). A rewrite without such a rule, because nothing traced
// the nat table, stays where its time put it, without ByChain.
func attributeNAT(hops []trace.Hop) []trace.Hop {
	after := map[int][]trace.Hop{}
	moved := map[int]bool{}
	used := map[int]bool{}
	for i, h := range hops {
		if h.Kind != trace.HopNAT || h.NAT == nil {
			continue
		}
		for j, r := range hops {
			if used[j] || r.Node != h.Node || r.Netns != h.Netns || r.Direction != h.Direction || !did(r, h.NAT) {
				continue
			}
			nat := *h.NAT
			rule := *r.Rule
			nat.ByChain, nat.ByRule = rule.Chain, &rule
			h.NAT = &nat
			after[j] = append(after[j], h)
			moved[i], used[j] = true, true
			break
		}
	}
	out := make([]trace.Hop, 0, len(hops))
	for i, h := range hops {
		if !moved[i] {
			out = append(out, h)
		}
		out = append(out, after[i]...)
	}
	return out
}

// did reports whether rule hop r made the rewrite n.
func did(r trace.Hop, n *trace.NAT) bool {
	if r.Kind != trace.HopRule || r.Rule == nil || r.Packet == nil {
		return false
	}
	p := r.Packet
	switch target := Target(r.Rule); n.Type {
	case "DNAT":
		return (target == "DNAT" || target == "REDIRECT") && is(p.Dst, p.DstPort, n.From)
	case "SNAT":
		return (target == "SNAT" || target == "MASQUERADE") && is(p.Src, p.SrcPort, n.From)
	}
	return false
}

// is reports whether an address and port are the endpoint e; a zero port
// (ICMP, or a source that did not see it) matches any.
func is(addr netip.Addr, port uint16, e trace.Endpoint) bool {
	return addr == e.Addr() && (port == 0 || e.Port() == 0 || port == e.Port())
}
