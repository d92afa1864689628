package trace

import (
	"context"
	"net/netip"
)

// Match is what the kernel-side filters of the event sources select: the
// traced protocol, the probe's unique port, and the addresses the flow may
// carry before and after NAT. A TCP or UDP packet matches when either of its
// ports is Port; an ICMP packet matches when its source or destination is one
// of Addrs.
type Match struct {
	Proto Proto
	Port  uint16
	Addrs []netip.Addr
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
