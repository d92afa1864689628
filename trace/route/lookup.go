// Package route answers, in the current network namespace, the routing
// questions of a trace: which route the kernel's FIB picks for a packet after
// NAT, written as `ip route` would print the entry, and, on a node, which host
// veth and which network namespace belong to a pod IP. InNetns runs any of
// them in another namespace.
package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// ErrNoRoute is returned, wrapped, when no table has a route for the packet.
var ErrNoRoute = errors.New("no route")

// Query is the packet whose route is looked up, as it looks after NAT.
type Query struct {
	// Src is the packet's source address; it may be left out for a packet
	// the host sends itself.
	Src netip.Addr
	Dst netip.Addr
	// Iif is the interface a forwarded packet came in on; empty for a
	// packet the host sends itself.
	Iif string
	// Mark is the packet's firewall mark, which policy rules may select on.
	Mark uint32
}

// LookupHop looks q up and returns the result as a HopRoute hop of node: a
// lookup made by the tracer, not an observation of the packet. Iface is the
// input interface, if any; the caller sets Direction and Netns.
func LookupHop(node string, q Query) (trace.Hop, error) {
	r, err := Lookup(q)
	if err != nil {
		return trace.Hop{}, err
	}
	return trace.Hop{Time: time.Now(), Node: node, Kind: trace.HopRoute, Iface: q.Iif,
		Source: "fib", Route: &r, Note: "lookup"}, nil
}

// Lookup asks the kernel's FIB which route q takes: the entry of the table
// the lookup used (its prefix, type, protocol, scope, flags) together with the
// nexthop the lookup chose (gateway and output device; "lo" for a local
// destination). Blackhole, unreachable and prohibit routes make the kernel's
// lookup fail; their entry is then found by walking the policy rules the way
// the kernel does.
func Lookup(q Query) (trace.Route, error) {
	if !q.Dst.IsValid() {
		return trace.Route{}, errors.New("route lookup needs a destination address")
	}
	opts := &netlink.RouteGetOptions{Iif: q.Iif, Mark: q.Mark}
	if q.Src.IsValid() {
		opts.SrcAddr = net.IP(q.Src.AsSlice())
	}
	dst := net.IP(q.Dst.AsSlice())
	chosen, err := netlink.RouteGetWithOptions(dst, opts)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EHOSTUNREACH) ||
			errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENETUNREACH) {
			return lookupRejecting(q, err)
		}
		return trace.Route{}, fmt.Errorf("looking up the route to %s: %w", q.Dst, err)
	}
	opts.FIBMatch = true
	entries, err := netlink.RouteGetWithOptions(dst, opts)
	if err != nil {
		return trace.Route{}, fmt.Errorf("looking up the FIB entry for %s: %w", q.Dst, err)
	}
	if len(chosen) == 0 || len(entries) == 0 {
		return trace.Route{}, fmt.Errorf("looking up the route to %s: the kernel answered nothing", q.Dst)
	}
	return describe(entries[0], chosen[0])
}

// lookupRejecting finds the route behind a failed kernel lookup: a
// blackhole, unreachable or prohibit entry, or none at all.
func lookupRejecting(q Query, lookupErr error) (trace.Route, error) {
	entry, found, err := walkRules(q)
	if err != nil {
		return trace.Route{}, fmt.Errorf("looking up the route to %s (the kernel said %v): %w", q.Dst, lookupErr, err)
	}
	if !found {
		return trace.Route{}, fmt.Errorf("%w to %s: %v", ErrNoRoute, q.Dst, lookupErr)
	}
	switch entry.Type {
	case unix.RTN_BLACKHOLE, unix.RTN_UNREACHABLE, unix.RTN_PROHIBIT:
		return describe(entry, entry)
	}
	return trace.Route{}, fmt.Errorf("looking up the route to %s: the kernel said %w, but the rules lead to %s %s",
		q.Dst, lookupErr, typeName(entry.Type), prefixOf(entry))
}

// describe combines the FIB entry with the nexthop the lookup chose.
func describe(entry, chosen netlink.Route) (trace.Route, error) {
	r := trace.Route{
		Dst:    prefixOf(entry),
		Type:   typeName(entry.Type),
		Onlink: entry.Flags&unix.RTNH_F_ONLINK != 0 || chosen.Flags&unix.RTNH_F_ONLINK != 0,
		Table:  entry.Table,
	}
	if gw, ok := netip.AddrFromSlice(chosen.Gw); ok {
		r.Gateway = gw.Unmap()
	}
	if src, ok := netip.AddrFromSlice(entry.Src); ok {
		r.PrefSrc = src.Unmap()
	}
	if chosen.LinkIndex > 0 {
		link, err := netlink.LinkByIndex(chosen.LinkIndex)
		if err != nil {
			return trace.Route{}, fmt.Errorf("naming interface %d of route %s: %w", chosen.LinkIndex, r.Dst, err)
		}
		r.Dev = link.Attrs().Name
	}
	r.Text = format(entry, r)
	return r, nil
}

// prefixOf is the destination prefix of a route; a nil Dst is the default route.
func prefixOf(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		if r.Family == unix.AF_INET6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	addr, _ := netip.AddrFromSlice(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones).Masked()
}
