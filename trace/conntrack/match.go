package conntrack

import (
	"net/netip"
	"slices"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// matches reports whether the conntrack entry with these tuples belongs to
// the traced flow. TCP and UDP entries match when any of their four ends
// does: its port is one of m.Ports, or it is one of m.Ends. ICMP entries
// match when any of their addresses is one of m.Addrs and, when m.Ports is
// set, their echo identifier is one of m.Ports before or after NAT.
func matches(m trace.Match, original, reply trace.Tuple) bool {
	if original.Proto != m.Proto {
		return false
	}
	if m.Proto != trace.ICMP {
		return m.Covers(original.Src, original.Dst) || m.Covers(reply.Src, reply.Dst)
	}
	ends := []netip.AddrPort{original.Src, original.Dst, reply.Src, reply.Dst}
	if !slices.ContainsFunc(ends, func(e netip.AddrPort) bool { return slices.Contains(m.Addrs, e.Addr()) }) {
		return false
	}
	return len(m.Ports) == 0 || slices.Contains(m.Ports, original.Src.Port()) || slices.Contains(m.Ports, reply.Dst.Port())
}
