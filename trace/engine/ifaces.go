package engine

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/capture"
)

// Bounds of the captures of one session.
const (
	// DefaultMaxInterfaces bounds the interfaces a session captures on in
	// the node's namespace when Config.MaxInterfaces is zero.
	DefaultMaxInterfaces = 64
	// ringBudget is the kernel ring memory the captures of one session
	// share; each gets at least minRingSize and at most
	// capture.DefaultRingSize.
	ringBudget  = 32 << 20
	minRingSize = 256 << 10
)

// Names of the Calico devices the node's packets may cross.
const (
	hostVethPrefix = "cali"
	ipipDevice     = "tunl0"
	vxlanPrefix    = "vxlan"
)

// nodeInterfaces chooses, in the calling thread's network namespace, the
// interfaces to capture on and those left out beyond max. They are taken in
// this order: the interfaces named in first (the veths of the flow's pods),
// the tunnel devices (tunl0, vxlan.calico), the underlay NICs (interfaces
// with a global IPv4 address), then the other pod veths (cali*) by name.
// Interfaces that are down, and others that pod traffic does not cross,
// are not captured.
func nodeInterfaces(first []string, max int) (chosen, skipped []string, err error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("listing interfaces: %w", err)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("listing addresses: %w", err)
	}
	global := map[int]bool{}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			global[a.LinkIndex] = true
		}
	}
	var up, tunnels, underlay, veths []string
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagUp == 0 || a.Flags&net.FlagLoopback != 0 {
			continue
		}
		up = append(up, a.Name)
		switch {
		case strings.HasPrefix(a.Name, hostVethPrefix):
			veths = append(veths, a.Name)
		case a.Name == ipipDevice || strings.HasPrefix(a.Name, vxlanPrefix):
			tunnels = append(tunnels, a.Name)
		case global[a.Index]:
			underlay = append(underlay, a.Name)
		}
	}
	var ordered []string
	for _, name := range first {
		if slices.Contains(up, name) {
			ordered = append(ordered, name)
		}
	}
	slices.Sort(veths)
	for _, group := range [][]string{tunnels, underlay, veths} {
		for _, name := range group {
			if !slices.Contains(ordered, name) {
				ordered = append(ordered, name)
			}
		}
	}
	if len(ordered) > max {
		return ordered[:max], ordered[max:], nil
	}
	return ordered, nil, nil
}

// podInterfaces lists the interfaces that are up in the calling thread's
// network namespace, loopback aside: a pod's eth0.
func podInterfaces() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var names []string
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagUp != 0 && a.Flags&net.FlagLoopback == 0 {
			names = append(names, a.Name)
		}
	}
	return names, nil
}

// ringSize shares the session's ring budget among n captures.
func ringSize(n int) int {
	if n == 0 {
		return capture.DefaultRingSize
	}
	return min(max(ringBudget/n, minRingSize), capture.DefaultRingSize)
}
