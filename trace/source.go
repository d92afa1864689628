package trace

import (
	"context"
	"net/netip"
	"slices"
)

// Match is what the kernel-side filters of the event sources select: the
// traced protocol, and the ports, ends and addresses that the flow's packets
// may carry before and after NAT.
//
// A TCP or UDP packet matches when either of its ports is one of Ports, or
// when its source or its destination is one of Ends; an end with port 0
// stands for every port of its address. An ICMP packet matches when its
// source or destination is one of Addrs. For ICMP, Ports hold echo
// identifiers, which only conntrack tells apart: see trace/conntrack.
type Match struct {
	Proto Proto
	Ports []uint16
	Ends  []netip.AddrPort
	Addrs []netip.Addr
}

// Covers reports whether a packet of m's protocol from src to dst matches:
// by a port or an end for TCP and UDP, by an address for ICMP, whose ports
// are not looked at.
func (m Match) Covers(src, dst netip.AddrPort) bool {
	if m.Proto == ICMP {
		return slices.Contains(m.Addrs, src.Addr()) || slices.Contains(m.Addrs, dst.Addr())
	}
	return slices.Contains(m.Ports, src.Port()) || slices.Contains(m.Ports, dst.Port()) ||
		m.HasEnd(src) || m.HasEnd(dst)
}

// HasEnd reports whether e is one of Ends, or has the address of an end
// with port 0.
func (m Match) HasEnd(e netip.AddrPort) bool {
	return slices.ContainsFunc(m.Ends, func(end netip.AddrPort) bool {
		return end.Addr() == e.Addr() && (end.Port() == 0 || end.Port() == e.Port())
	})
}

// Clone returns a copy of m that shares no slice with it.
func (m Match) Clone() Match {
	return Match{Proto: m.Proto, Ports: slices.Clone(m.Ports), Ends: slices.Clone(m.Ends), Addrs: slices.Clone(m.Addrs)}
}

// Source is one kind of kernel event (netfilter trace, conntrack, capture)
// watched for one flow in one network namespace.
type Source interface {
	// Arm starts watching. Once it returns nil, every matching event is
	// passed to emit, from any goroutine, until Close.
	Arm(ctx context.Context, emit func(Hop)) error
	// Close stops watching, restores whatever Arm changed on the node, and
	// reports the events that were lost.
	Close() ([]Loss, error)
}

// Widener is a Source whose match can grow while it is armed, so that it
// keeps following a flow that a NAT gave ports or addresses its match did
// not name.
type Widener interface {
	Source
	// Widen makes the source select what m selects. m holds everything the
	// source selects already, and more; what it adds is removed by Close,
	// as what Arm added is. Widen may be called from any goroutine once Arm
	// returned nil, one call at a time, and fails after Close.
	Widen(m Match) error
}
