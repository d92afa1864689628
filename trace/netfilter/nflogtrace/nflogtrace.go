// Package nflogtrace reads the TRACE events of the legacy iptables backend.
// ip_tables logs every rule a traced packet (skb->nf_trace) matches through
// the netns's nf_log logger for IPv4; bound to nfnetlink_log, the events
// arrive on nflog group 0 with a prefix "TRACE: table:chain:type:number ".
package nflogtrace

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	nflog "github.com/florianl/go-nflog/v2"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/headers"
)

// Group is the nflog group ip_tables sends TRACE events to.
const Group = 0

// prefixStart is how ip_tables starts the prefix of a TRACE event.
const prefixStart = "TRACE: "

// ErrNotTrace is returned for an nflog message that is not a TRACE event,
// such as the output of a LOG or NFLOG rule sharing group 0.
var ErrNotTrace = errors.New("not a TRACE event")

// Prefix is the decoded prefix of a TRACE event.
type Prefix struct {
	Table string
	Chain string
	// Type is "rule", "return" or "policy".
	Type string
	// Number is the 1-based rule number in the chain; for a return or a
	// policy it is the number of rules plus one.
	Number int
}

// ParsePrefix decodes a prefix such as "TRACE: raw:PREROUTING:rule:2 ". A
// chain name may itself hold colons; the table name may not.
func ParsePrefix(s string) (Prefix, error) {
	rest, ok := strings.CutPrefix(s, prefixStart)
	if !ok {
		return Prefix{}, ErrNotTrace
	}
	rest = strings.TrimRight(rest, " \x00")
	table, rest, ok := strings.Cut(rest, ":")
	if !ok || table == "" {
		return Prefix{}, fmt.Errorf("TRACE prefix %q: no table", s)
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return Prefix{}, fmt.Errorf("TRACE prefix %q: no rule number", s)
	}
	number, err := strconv.Atoi(rest[i+1:])
	if err != nil || number < 1 {
		return Prefix{}, fmt.Errorf("TRACE prefix %q: bad rule number %q", s, rest[i+1:])
	}
	rest = rest[:i]
	j := strings.LastIndexByte(rest, ':')
	if j < 1 {
		return Prefix{}, fmt.Errorf("TRACE prefix %q: no chain or type", s)
	}
	p := Prefix{Table: table, Chain: rest[:j], Type: rest[j+1:], Number: number}
	switch p.Type {
	case "rule", "return", "policy":
	default:
		return Prefix{}, fmt.Errorf("TRACE prefix %q: unknown type %q", s, p.Type)
	}
	return p, nil
}

// Event is one decoded TRACE event.
type Event struct {
	Prefix
	// Packet holds the headers from the event's payload, with Mark set.
	Packet *trace.Packet
	// InIndex and OutIndex are the ifindexes of the input and output
	// devices, zero when the hook has none.
	InIndex  uint32
	OutIndex uint32
	Mark     uint32
}

// Decode decodes the attributes of an nflog message into a TRACE event.
func Decode(a nflog.Attribute) (Event, error) {
	if a.Prefix == nil {
		return Event{}, ErrNotTrace
	}
	prefix, err := ParsePrefix(*a.Prefix)
	if err != nil {
		return Event{}, err
	}
	if a.Payload == nil {
		return Event{}, fmt.Errorf("TRACE event %q without payload", *a.Prefix)
	}
	pkt, err := headers.Decode(*a.Payload)
	if err != nil {
		return Event{}, fmt.Errorf("TRACE event %q: %w", *a.Prefix, err)
	}
	ev := Event{Prefix: prefix, Packet: pkt}
	if a.InDev != nil {
		ev.InIndex = *a.InDev
	}
	if a.OutDev != nil {
		ev.OutIndex = *a.OutDev
	}
	if a.Mark != nil {
		ev.Mark = *a.Mark
		pkt.Mark = *a.Mark
	}
	return ev, nil
}
