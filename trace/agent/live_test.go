package agent

import (
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
)

func TestRepliesToTakesTheAnswerOrAnICMPError(t *testing.T) {
	replies := repliesTo(trace.Flow{Proto: trace.TCP, Src: clientIP, SrcPort: 45000, Dst: serviceIP, DstPort: 80})
	if !replies(trace.Hop{Packet: &trace.Packet{Proto: trace.TCP, Src: serviceIP, SrcPort: 80, Dst: clientIP, DstPort: 45000}}) {
		t.Error("the SYN-ACK is not taken for the reply")
	}
	if !replies(trace.Hop{Packet: &trace.Packet{Proto: trace.ICMP, Src: serviceIP, Dst: clientIP, ICMPType: 3, ICMPCode: 3}}) {
		t.Error("an ICMP port unreachable is not taken for the reply")
	}
	if replies(trace.Hop{Packet: &trace.Packet{Proto: trace.TCP, Src: serviceIP, SrcPort: 80, Dst: clientIP, DstPort: 41000}}) {
		t.Error("a packet of another connection is taken for the reply")
	}
}
