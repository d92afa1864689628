package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol tags every route the package owns. 12 is RTPROT_BIRD, so `ip route` prints
// "proto bird", as on a Calico node whose routes BIRD installs.
const routeProtocol = 12

// dumpRetries bounds how often a netlink dump interrupted by a concurrent change is retried.
const dumpRetries = 5

// blackhole is the route for a block of the local node: addresses of the block that no pod
// route claims are dropped here instead of leaking to the default route.
func blackhole(cidr netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Dst:      ipNet(cidr),
		Type:     unix.RTN_BLACKHOLE,
		Protocol: routeProtocol,
		Table:    unix.RT_TABLE_MAIN,
	}
}

// gatewayRoute is a route for cidr through gateway on the link with index dev; onlink makes
// the kernel take the gateway as reachable on that link whatever its addresses.
func gatewayRoute(cidr netip.Prefix, gateway netip.Addr, dev int, onlink bool) *netlink.Route {
	var flags int
	if onlink {
		flags = int(netlink.FLAG_ONLINK)
	}
	return &netlink.Route{
		Dst:       ipNet(cidr),
		Gw:        gateway.AsSlice(),
		LinkIndex: dev,
		Flags:     flags,
		Type:      unix.RTN_UNICAST,
		Protocol:  routeProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// syncRoutes makes the routes tagged with routeProtocol in the main table match want: it
// replaces those that differ, deletes those not wanted and adds the missing ones without
// replacing a route of the same destination that someone else owns.
func syncRoutes(h *netlink.Handle, want map[netip.Prefix]*netlink.Route) error {
	have, err := ownedRoutes(h)
	if err != nil {
		return err
	}
	var errs []error
	present := make(map[netip.Prefix]bool, len(have))
	for _, r := range have {
		dst := prefix(r.Dst)
		w, ok := want[dst]
		switch {
		case !ok || r.Priority != 0 || present[dst]:
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("deleting route %s: %w", dst, err))
			}
			continue
		case !sameRoute(&r, w):
			if err := h.RouteReplace(w); err != nil {
				errs = append(errs, fmt.Errorf("fixing route %s: %w", dst, err))
			}
		}
		present[dst] = true
	}

	missing := make([]netip.Prefix, 0, len(want))
	for dst := range want {
		if !present[dst] {
			missing = append(missing, dst)
		}
	}
	slices.SortFunc(missing, netip.Prefix.Compare)
	for _, dst := range missing {
		err := h.RouteAdd(want[dst])
		switch {
		case errors.Is(err, unix.EEXIST):
			errs = append(errs, fmt.Errorf("adding route %s: a route that is not ours has this destination", dst))
		case err != nil:
			errs = append(errs, fmt.Errorf("adding route %s: %w", dst, err))
		}
	}
	return errors.Join(errs...)
}

// ownedRoutes lists the IPv4 routes of the main table tagged with routeProtocol.
func ownedRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: routeProtocol, Table: unix.RT_TABLE_MAIN}
	var err error
	for range dumpRetries {
		var routes []netlink.Route
		routes, err = h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err == nil {
			return routes, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("listing routes of proto %d: %w", routeProtocol, err)
}

// sameRoute tells whether an installed route already is the wanted one.
func sameRoute(have, want *netlink.Route) bool {
	return have.Type == want.Type &&
		have.LinkIndex == want.LinkIndex &&
		have.Gw.Equal(want.Gw) &&
		have.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK) &&
		have.Scope == want.Scope
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	addr, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), bits)
}
