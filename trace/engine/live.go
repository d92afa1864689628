package engine

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// DescribeLive names the flow a live trace waits for: "tcp 172.16.0.5 > 10.96.0.10:80".
func DescribeLive(f trace.Flow) string {
	if f.Proto == trace.ICMP {
		return fmt.Sprintf("icmp %s > %s", f.Src, f.Dst)
	}
	return fmt.Sprintf("%s %s > %s", f.Proto, f.Src, netip.AddrPortFrom(f.Dst, f.DstPort))
}

// StartsFlow accepts the first packet of a new live flow seen since the
// given time, when every node had armed: from the source to the
// destination, a TCP SYN, a UDP datagram or an ICMP echo request. A packet
// seen before is left: the nodes that armed later missed its way.
// Conntrack's entries are not taken: those of earlier connections on the
// same port end, and are reported, while the trace waits.
func StartsFlow(want trace.Flow, since time.Time) func(trace.Hop) bool {
	return func(h trace.Hop) bool {
		p := h.Packet
		if h.Kind != trace.HopInterface || p == nil || p.Outer != nil || p.Proto != want.Proto ||
			p.Src != want.Src || p.Dst != want.Dst || h.Time.Before(since) {
			return false
		}
		switch want.Proto {
		case trace.ICMP:
			return p.ICMPType == icmpEchoRequest
		case trace.TCP:
			return p.DstPort == want.DstPort && p.TCPFlags == "S"
		}
		return p.DstPort == want.DstPort
	}
}

// FlowOf completes a live flow with the source port (for ICMP the echo
// identifier) of its first packet.
func FlowOf(want trace.Flow, first trace.Hop) trace.Flow {
	f := want
	if f.Proto == trace.ICMP {
		f.SrcPort = first.Packet.ICMPID
	} else {
		f.SrcPort = first.Packet.SrcPort
	}
	return f
}
