// Package nfttrace reads nf_tables trace events. A packet with
// skb->nf_trace set (by `meta nftrace set 1`, or by any other tracer) makes
// every nf_tables chain it walks send NFT_MSG_TRACE messages to the
// NFNLGRP_NFTRACE multicast group of NETLINK_NETFILTER, one per rule that
// decided something, return or policy.
package nfttrace

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/headers"
)

// MessageType is the netlink message type of a trace event.
const MessageType = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_TRACE)

// nfgenmsgLen is the length of the nfgenmsg header before the attributes.
const nfgenmsgLen = 4

// The netfilter verdicts of linux/netfilter.h, in the low byte of a verdict
// code.
const (
	nfDrop        = 0
	nfAccept      = 1
	nfStolen      = 2
	nfQueue       = 3
	nfRepeat      = 4
	nfStop        = 5
	nfVerdictMask = 0xff
)

// Event is one decoded trace event.
type Event struct {
	// ID is the kernel's trace id: the events of one packet in one pass
	// through the hooks share it.
	ID uint32
	// Family is the family of the event's table, as nft spells it.
	Family string
	Table  string
	Chain  string
	// Handle is the rule's handle; zero for a policy or an implicit return.
	Handle uint64
	// Type is "rule", "return" or "policy".
	Type string
	// Verdict is "accept", "drop", "continue", "return", "jump CHAIN",
	// "goto CHAIN", "queue", "stolen", "repeat" or "stop"; for a policy event
	// it is the policy.
	Verdict string
	// InIndex and OutIndex are the ifindexes of the input and output
	// devices; zero when absent. The kernel sends them, like the headers,
	// only with the first event of a base chain.
	InIndex  uint32
	OutIndex uint32
	// Mark is the packet mark, zero when unset.
	Mark uint32
	// Packet holds the network and transport headers when the event carries
	// them, else nil.
	Packet *trace.Packet
}

// familyNames spells the nfgenmsg families as nft does.
var familyNames = map[uint8]string{
	unix.NFPROTO_INET:   "inet",
	unix.NFPROTO_IPV4:   "ip",
	unix.NFPROTO_ARP:    "arp",
	unix.NFPROTO_NETDEV: "netdev",
	unix.NFPROTO_BRIDGE: "bridge",
	unix.NFPROTO_IPV6:   "ip6",
}

// traceTypes names the NFT_TRACETYPE values.
var traceTypes = map[uint32]string{
	unix.NFT_TRACETYPE_POLICY: "policy",
	unix.NFT_TRACETYPE_RETURN: "return",
	unix.NFT_TRACETYPE_RULE:   "rule",
}

// ErrNotTrace is returned for a message that is not an NFT_MSG_TRACE.
var ErrNotTrace = errors.New("not an nf_tables trace message")

// Decode decodes a netlink message from NFNLGRP_NFTRACE.
func Decode(m netlink.Message) (Event, error) {
	if m.Header.Type != MessageType {
		return Event{}, ErrNotTrace
	}
	return DecodePayload(m.Data)
}

// DecodePayload decodes the body of an NFT_MSG_TRACE message: the nfgenmsg
// header and the NFTA_TRACE attributes.
func DecodePayload(b []byte) (Event, error) {
	if len(b) < nfgenmsgLen {
		return Event{}, fmt.Errorf("trace message of %d bytes: no nfgenmsg header", len(b))
	}
	ev := Event{Family: familyName(b[0])}
	ad, err := netlink.NewAttributeDecoder(b[nfgenmsgLen:])
	if err != nil {
		return Event{}, fmt.Errorf("decoding trace attributes: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	var (
		network, transport []byte
		typ                uint32
		policy             *uint32
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_TABLE:
			ev.Table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			ev.Chain = ad.String()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.Handle = ad.Uint64()
		case unix.NFTA_TRACE_TYPE:
			typ = ad.Uint32()
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				v, err := decodeVerdict(nad)
				ev.Verdict = v
				return err
			})
		case unix.NFTA_TRACE_ID:
			ev.ID = ad.Uint32()
		case unix.NFTA_TRACE_NETWORK_HEADER:
			network = ad.Bytes()
		case unix.NFTA_TRACE_TRANSPORT_HEADER:
			transport = ad.Bytes()
		case unix.NFTA_TRACE_IIF:
			ev.InIndex = ad.Uint32()
		case unix.NFTA_TRACE_OIF:
			ev.OutIndex = ad.Uint32()
		case unix.NFTA_TRACE_MARK:
			ev.Mark = ad.Uint32()
		case unix.NFTA_TRACE_POLICY:
			p := ad.Uint32()
			policy = &p
		}
	}
	if err := ad.Err(); err != nil {
		return Event{}, fmt.Errorf("decoding trace attributes: %w", err)
	}
	var ok bool
	if ev.Type, ok = traceTypes[typ]; !ok {
		return Event{}, fmt.Errorf("trace event of unknown type %d", typ)
	}
	if ev.Table == "" || ev.Chain == "" {
		return Event{}, fmt.Errorf("trace event without table or chain")
	}
	if policy != nil {
		ev.Verdict = verdictName(int32(*policy), "")
	}
	if network != nil {
		// The network header attribute ends where the transport header
		// starts; joined they read like the packet itself.
		pkt, err := headers.Decode(append(network[:len(network):len(network)], transport...))
		if err == nil {
			pkt.Mark = ev.Mark
			ev.Packet = pkt
		}
	}
	return ev, nil
}

// decodeVerdict reads the nested NFTA_VERDICT attributes.
func decodeVerdict(ad *netlink.AttributeDecoder) (string, error) {
	ad.ByteOrder = binary.BigEndian
	var (
		code    int32
		hasCode bool
		chain   string
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code, hasCode = int32(ad.Uint32()), true
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if !hasCode {
		return "", fmt.Errorf("verdict without a code")
	}
	return verdictName(code, chain), nil
}

// verdictName spells a verdict code as nft does.
func verdictName(code int32, chain string) string {
	switch code {
	case unix.NFT_CONTINUE:
		return "continue"
	case unix.NFT_BREAK:
		return "break"
	case unix.NFT_JUMP:
		return "jump " + chain
	case unix.NFT_GOTO:
		return "goto " + chain
	case unix.NFT_RETURN:
		return "return"
	}
	switch code & nfVerdictMask {
	case nfDrop:
		return "drop"
	case nfAccept:
		return "accept"
	case nfStolen:
		return "stolen"
	case nfQueue:
		return "queue"
	case nfRepeat:
		return "repeat"
	case nfStop:
		return "stop"
	}
	return fmt.Sprintf("verdict %d", code)
}

func familyName(f uint8) string {
	if name, ok := familyNames[f]; ok {
		return name
	}
	return fmt.Sprintf("family %d", f)
}
