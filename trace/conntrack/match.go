package conntrack

import (
	"net/netip"
	"slices"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// matches reports whether the conntrack entry with these tuples belongs to
// the traced flow. TCP and UDP entries match when any of their four ports is
// m.Port (or, with no port set, any address is one of m.Addrs). ICMP entries
// match when any of their addresses is one of m.Addrs and, when m.Port is
// set, their echo identifier is m.Port before or after NAT.
func matches(m trace.Match, original, reply trace.Tuple) bool {
	if original.Proto != m.Proto {
		return false
	}
	ends := []netip.AddrPort{original.Src, original.Dst, reply.Src, reply.Dst}
	if m.Proto == trace.ICMP || m.Port == 0 {
		if !slices.ContainsFunc(ends, func(e netip.AddrPort) bool { return slices.Contains(m.Addrs, e.Addr()) }) {
			return false
		}
		return m.Port == 0 || original.Src.Port() == m.Port || reply.Dst.Port() == m.Port
	}
	return slices.ContainsFunc(ends, func(e netip.AddrPort) bool { return e.Port() == m.Port })
}
