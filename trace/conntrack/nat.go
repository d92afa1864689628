package conntrack

import (
	"fmt"
	"net/netip"

	ct "github.com/ti-mo/conntrack"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Tuples converts the original and reply tuples of a conntrack entry to the
// trace model. For ICMP echo, the identifier takes the place of the port on
// the side of the host that sent the echo request: the original source and
// the reply destination. It fails for protocols the trace model does not know.
func Tuples(entry ct.Flow) (original, reply trace.Tuple, err error) {
	proto, err := protoOf(entry.TupleOrig.Proto.Protocol)
	if err != nil {
		return trace.Tuple{}, trace.Tuple{}, err
	}
	o, r := entry.TupleOrig, entry.TupleReply
	if proto == trace.ICMP {
		original = trace.Tuple{Proto: proto,
			Src: netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.ICMPID),
			Dst: netip.AddrPortFrom(o.IP.DestinationAddress, 0)}
		reply = trace.Tuple{Proto: proto,
			Src: netip.AddrPortFrom(r.IP.SourceAddress, 0),
			Dst: netip.AddrPortFrom(r.IP.DestinationAddress, r.Proto.ICMPID)}
		return original, reply, nil
	}
	original = trace.Tuple{Proto: proto,
		Src: netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort),
		Dst: netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort)}
	reply = trace.Tuple{Proto: proto,
		Src: netip.AddrPortFrom(r.IP.SourceAddress, r.Proto.SourcePort),
		Dst: netip.AddrPortFrom(r.IP.DestinationAddress, r.Proto.DestinationPort)}
	return original, reply, nil
}

func protoOf(number uint8) (trace.Proto, error) {
	for _, p := range []trace.Proto{trace.TCP, trace.UDP, trace.ICMP} {
		if p.Number() == number {
			return p, nil
		}
	}
	return "", fmt.Errorf("conntrack entry has IP protocol %d, which the trace model does not know", number)
}

// NATs derives the address rewrites of a conntrack entry from its original
// and reply tuples, in the order the packet meets them: DNAT when the
// original destination differs from the reply source, then SNAT when the
// original source differs from the reply destination. An entry without NAT
// yields none.
func NATs(original, reply trace.Tuple) []trace.NAT {
	var nats []trace.NAT
	if original.Dst != reply.Src {
		nats = append(nats, trace.NAT{Type: "DNAT", From: original.Dst, To: reply.Src,
			Original: original, Reply: reply})
	}
	if original.Src != reply.Dst {
		nats = append(nats, trace.NAT{Type: "SNAT", From: original.Src, To: reply.Dst,
			Original: original, Reply: reply})
	}
	return nats
}

// Flows returns the request as it leaves the host after NAT (the inverse of
// the reply tuple) and the reply as its sender addresses it (the reply
// tuple), so that a trace can follow the packet across the rewrite. For
// ICMP, both flows carry the echo identifier in SrcPort, as trace.Flow does.
func Flows(original, reply trace.Tuple) (request, answer trace.Flow) {
	request = trace.Flow{Proto: original.Proto,
		Src: reply.Dst.Addr(), SrcPort: reply.Dst.Port(),
		Dst: reply.Src.Addr(), DstPort: reply.Src.Port()}
	answer = request.Reverse()
	if original.Proto == trace.ICMP {
		answer.SrcPort, answer.DstPort = request.SrcPort, 0
	}
	return request, answer
}

// FlowsOf is Flows for a conntrack entry: the request after NAT and the
// reply flow.
func FlowsOf(entry ct.Flow) (request, answer trace.Flow, err error) {
	original, reply, err := Tuples(entry)
	if err != nil {
		return trace.Flow{}, trace.Flow{}, err
	}
	request, answer = Flows(original, reply)
	return request, answer, nil
}
