// Package headers summarises the IPv4 and transport headers carried by
// netfilter trace events (the nflog payload, nf_tables' network and transport
// header attributes) as a trace.Packet.
package headers

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

const (
	ipv4MinHeaderLen = 20
	protoICMP        = 1
	protoTCP         = 6
	protoUDP         = 17
	icmpEchoReply    = 0
	icmpEchoRequest  = 8
)

// ErrTruncated is returned when the bytes end inside the IPv4 header.
var ErrTruncated = errors.New("truncated IPv4 header")

// Decode reads an IPv4 header and as much of the transport header that
// follows it as b holds: the ports need 4 bytes of TCP or UDP, the TCP flags
// 14, the ICMP echo identifier and sequence 8. A later fragment carries no
// transport header and decodes to addresses only.
func Decode(b []byte) (*trace.Packet, error) {
	if len(b) < ipv4MinHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrTruncated, len(b))
	}
	if version := b[0] >> 4; version != 4 {
		return nil, fmt.Errorf("IP version %d, want 4", version)
	}
	headerLen := int(b[0]&0x0f) * 4
	if headerLen < ipv4MinHeaderLen {
		return nil, fmt.Errorf("IPv4 header length %d below the minimum", headerLen)
	}
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes, header length %d", ErrTruncated, len(b), headerLen)
	}
	p := &trace.Packet{
		Length: int(b[2])<<8 | int(b[3]),
		TTL:    b[8],
		Src:    netip.AddrFrom4([4]byte(b[12:16])),
		Dst:    netip.AddrFrom4([4]byte(b[16:20])),
	}
	proto := b[9]
	switch proto {
	case protoTCP:
		p.Proto = trace.TCP
	case protoUDP:
		p.Proto = trace.UDP
	case protoICMP:
		p.Proto = trace.ICMP
	default:
		return p, nil
	}
	fragmentOffset := (int(b[6])&0x1f)<<8 | int(b[7])
	if fragmentOffset != 0 {
		return p, nil
	}
	decodeTransport(p, b[headerLen:])
	return p, nil
}

// decodeTransport fills the transport fields of p from the bytes that were
// captured of its transport header.
func decodeTransport(p *trace.Packet, l4 []byte) {
	switch p.Proto {
	case trace.TCP, trace.UDP:
		if len(l4) < 4 {
			return
		}
		p.SrcPort = uint16(l4[0])<<8 | uint16(l4[1])
		p.DstPort = uint16(l4[2])<<8 | uint16(l4[3])
		if p.Proto == trace.TCP && len(l4) >= 14 {
			p.TCPFlags = TCPFlags(l4[13])
		}
	case trace.ICMP:
		if len(l4) < 2 {
			return
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
		if (p.ICMPType == icmpEchoRequest || p.ICMPType == icmpEchoReply) && len(l4) >= 8 {
			p.ICMPID = uint16(l4[4])<<8 | uint16(l4[5])
			p.ICMPSeq = uint16(l4[6])<<8 | uint16(l4[7])
		}
	}
}

// tcpFlagLetters are the TCP flags in the order and spelling tcpdump uses;
// ACK is printed last, as ".".
var tcpFlagLetters = []struct {
	bit    byte
	letter string
}{
	{0x01, "F"}, {0x02, "S"}, {0x04, "R"}, {0x08, "P"}, {0x20, "U"}, {0x40, "E"}, {0x80, "W"}, {0x10, "."},
}

// TCPFlags formats the flags byte of a TCP header as tcpdump does: "S" for a
// SYN, "S." for a SYN-ACK, "P." for a push with ACK, "none" for no flags.
func TCPFlags(flags byte) string {
	var sb strings.Builder
	for _, f := range tcpFlagLetters {
		if flags&f.bit != 0 {
			sb.WriteString(f.letter)
		}
	}
	if sb.Len() == 0 {
		return "none"
	}
	return sb.String()
}
