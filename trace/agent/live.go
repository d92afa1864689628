package agent

import (
	"github.com/kubectl-nettrace/nettrace/trace"
)

// ICMP echo types.
const (
	icmpEchoReply   = 0
	icmpEchoRequest = 8
)

// repliesTo accepts a packet back to the flow's client: its reply, or an
// ICMP error.
func repliesTo(flow trace.Flow) func(trace.Hop) bool {
	return func(h trace.Hop) bool {
		p := h.Packet
		if p == nil || p.Dst != flow.Src {
			return false
		}
		switch {
		case p.Proto == trace.ICMP && p.ICMPType == icmpEchoReply:
			return flow.Proto == trace.ICMP && p.ICMPID == flow.SrcPort
		case p.Proto == trace.ICMP:
			return p.ICMPType != icmpEchoRequest
		}
		return p.Proto == flow.Proto && p.DstPort == flow.SrcPort
	}
}
