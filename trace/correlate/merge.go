package correlate

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// signature identifies one packet at one point of its way, apart from its
// TTL, length and mark. The echo sequence is left out, so that the echo
// requests of one probe count as retransmissions of each other.
type signature struct {
	proto              trace.Proto
	src, dst           netip.AddrPort
	flags              string
	icmpType, icmpCode uint8
	icmpID             uint16
	outer              trace.Tunnel
}

func signatureOf(p *trace.Packet) signature {
	if p == nil {
		return signature{}
	}
	s := signature{proto: p.Proto, src: netip.AddrPortFrom(p.Src, p.SrcPort), dst: netip.AddrPortFrom(p.Dst, p.DstPort),
		flags: packetKind(p), icmpType: p.ICMPType, icmpCode: p.ICMPCode, icmpID: p.ICMPID}
	if p.Outer != nil {
		s.outer = *p.Outer
	}
	return s
}

// point is where and what a hop observed: two hops at the same point are
// the same event reported twice, or a retransmission of it.
type point struct {
	node, netns, iface string
	kind               trace.HopKind
	dir                trace.Direction
	// what is the rule, route, rewrite, ARP or DNS message, when the
	// packet does not say it all.
	what   string
	packet signature
}

func pointOf(h trace.Hop) point {
	p := point{node: h.Node, netns: h.Netns, iface: h.Iface, kind: h.Kind, dir: h.Direction, packet: signatureOf(h.Packet)}
	switch {
	case h.Rule != nil:
		r := h.Rule
		// The backend is left out: iptables-nft's rules reported by
		// nftrace and by a legacy TRACE read the same.
		p.what = fmt.Sprintf("%s %s %s %s #%d %s", r.Family, r.Table, r.Chain, r.Type, r.Number, r.Text)
		if r.Number == 0 {
			p.what += " handle " + strconv.FormatUint(r.Handle, 10)
		}
	case h.NAT != nil:
		p.what = fmt.Sprintf("%s %s %s %v", h.NAT.Type, h.NAT.From, h.NAT.To, h.NAT.Original)
	case h.Route != nil:
		p.what = h.Route.Text
	case h.ARP != nil:
		a := h.ARP
		p.what = fmt.Sprintf("%s %s %s %s %s", a.Op, a.SenderIP, a.SenderMAC, a.TargetIP, a.TargetMAC)
	case h.DNS != nil:
		p.what = fmt.Sprintf("%d %t %s %s", h.DNS.ID, h.DNS.Response, h.DNS.Question, h.DNS.Type)
	}
	return p
}

// mergeDuplicates keeps one hop per point: a hop at the same point as an
// earlier one of the same transmission is the same event reported twice
// (by the legacy and the nft tracer, or by two captures) and is merged into
// it; one of a later transmission is a retransmission, folded into the
// first with a count in its note.
func mergeDuplicates(id identity, hops []trace.Hop) []trace.Hop {
	tx := transmissions(id, hops)
	type kept struct {
		at, tx, retransmissions int
	}
	seen := map[point]*kept{}
	var out []trace.Hop
	for i, h := range hops {
		p := pointOf(h)
		k, ok := seen[p]
		switch {
		case !ok:
			seen[p] = &kept{at: len(out), tx: tx[i]}
			out = append(out, h)
		case tx[i] == k.tx:
			if h.Source != out[k.at].Source {
				out[k.at].Note = addNote(out[k.at].Note, "also reported by "+h.Source)
			}
		default:
			k.retransmissions++
		}
	}
	for _, k := range seen {
		switch {
		case k.retransmissions == 1:
			out[k.at].Note = addNote(out[k.at].Note, "+1 retransmission")
		case k.retransmissions > 1:
			out[k.at].Note = addNote(out[k.at].Note, fmt.Sprintf("+%d retransmissions", k.retransmissions))
		}
	}
	return out
}

// addNote appends to a hop's note.
func addNote(note, more string) string {
	if note == "" {
		return more
	}
	return note + "; " + more
}
