package probe

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Answer is what came back to a probe.
type Answer string

// The answers a probe can get.
const (
	// Replied: the destination answered (SYN-ACK, a UDP or DNS reply, an
	// echo reply).
	Replied Answer = "replied"
	// Refused: a TCP RST or an ICMP port unreachable came back.
	Refused Answer = "refused"
	// Unreachable: another ICMP error came back (host or network
	// unreachable, administratively prohibited, TTL exceeded).
	Unreachable Answer = "unreachable"
	// NoAnswer: nothing came back before the timeout.
	NoAnswer Answer = "no-answer"
)

// Result is how a trace ends for this answer: Replied for a reply, Dropped
// for a refusal or an ICMP error (something on the path, a REJECT rule or
// the destination host, turned the packet away), NoAnswer for silence.
func (a Answer) Result() trace.Result {
	switch a {
	case Replied:
		return trace.Replied
	case Refused, Unreachable:
		return trace.Dropped
	}
	return trace.NoAnswer
}

// Result is what a sent probe got back.
type Result struct {
	Flow   trace.Flow
	Answer Answer
	// Reply says what came back, such as "SYN-ACK", "RST",
	// "ICMP port unreachable from 10.2.0.2", "echo reply" or
	// "DNS NOERROR, 1 answer"; for no answer, how long it waited.
	Reply string
	// From is the address the answer came from: the destination for a
	// SYN-ACK, RST or UDP reply, which reach a connected socket only from
	// there; the sender of an echo reply or of an ICMP error, when the
	// kernel tells.
	From netip.Addr
	// Payload is the data of a UDP reply.
	Payload []byte
	// DNS is the answer to a DNS probe.
	DNS *trace.DNS
	// Sent is when the probe left; RTT is how long the answer took, zero
	// when none came.
	Sent time.Time
	RTT  time.Duration
}

// icmpError is an ICMP error the kernel reported for a probe.
type icmpError struct {
	from      netip.Addr
	typ, code uint8
}

// answer classifies the error: port unreachable refuses, the rest is
// unreachable.
func (e icmpError) answer() Answer {
	if e.typ == 3 && e.code == 3 {
		return Refused
	}
	return Unreachable
}

// String names the error as "ICMP port unreachable from 10.2.0.2".
func (e icmpError) String() string {
	s := "ICMP " + icmpName(e.typ, e.code)
	if e.from.IsValid() {
		s += " from " + e.from.String()
	}
	return s
}

// icmpName names an ICMPv4 error type and code.
func icmpName(typ, code uint8) string {
	switch typ {
	case 3:
		switch code {
		case 0:
			return "net unreachable"
		case 1:
			return "host unreachable"
		case 2:
			return "protocol unreachable"
		case 3:
			return "port unreachable"
		case 4:
			return "fragmentation needed"
		case 9, 10, 13:
			return "administratively prohibited"
		}
		return fmt.Sprintf("destination unreachable (code %d)", code)
	case 11:
		return "time exceeded"
	case 12:
		return "parameter problem"
	}
	return fmt.Sprintf("type %d code %d", typ, code)
}
