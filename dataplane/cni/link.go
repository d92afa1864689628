package cni

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The pod's gateway: a link-local address that no interface has. The host
// side of the veth answers ARP for it by proxy, with hostVethMAC.
var (
	podGateway  = net.IPv4(169, 254, 1, 1).To4()
	hostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
)

// hostVethPrefix starts the name of every host-side veth.
const hostVethPrefix = "cali"

// defaultMTU is the MTU assumed when the node has no default route.
const defaultMTU = 1500

// hostVethName is the host side of the pod's veth: "cali" and the first 11
// hex digits of sha1("<namespace>.<pod>"), 15 characters, the most a Linux
// interface name holds.
func hostVethName(namespace, pod string) string {
	sum := sha1.Sum([]byte(namespace + "." + pod))
	return hostVethPrefix + hex.EncodeToString(sum[:])[:11]
}

// hostSysctls are set on the host side of every veth: answer ARP for any
// address routed elsewhere (the pod's gateway) at once, forward the pod's
// packets, and accept 127/8 destinations from the pod (for DNAT to
// localhost).
func hostSysctls(name string) map[string]string {
	return map[string]string{
		"net/ipv4/conf/" + name + "/proxy_arp":      "1",
		"net/ipv4/neigh/" + name + "/proxy_delay":   "0",
		"net/ipv4/conf/" + name + "/forwarding":     "1",
		"net/ipv4/conf/" + name + "/route_localnet": "1",
	}
}

// podLink is the result of plumbing a pod.
type podLink struct {
	hostName string
	podMAC   net.HardwareAddr
}

// plumbPod connects the pod in podNS to the node: a veth from ifName in the
// pod to hostName in the current (node) netns, the pod's address and routes,
// and the host side's settings and route. On error it removes what it made.
func plumbPod(podNS ns.NetNS, ifName, hostName string, addr netip.Addr, mtu int) (link podLink, err error) {
	link.hostName = hostName
	if err := enableIPForward(); err != nil {
		return link, err
	}
	// A veth of that name is left from an earlier sandbox of the same pod.
	if err := deleteLink(hostName); err != nil {
		return link, err
	}
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return link, fmt.Errorf("opening the node netns: %w", err)
	}
	defer hostNS.Close()

	err = podNS.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = ifName, mtu
		veth := &netlink.Veth{
			LinkAttrs:        attrs,
			PeerName:         hostName,
			PeerHardwareAddr: hostVethMAC,
			PeerNamespace:    netlink.NsFd(int(hostNS.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s (host side %s): %w", ifName, hostName, err)
		}
		return nil
	})
	if err != nil {
		return link, err
	}
	defer func() {
		if err != nil {
			if delErr := deleteLink(hostName); delErr != nil {
				err = errors.Join(err, delErr)
			}
		}
	}()

	if err := setUpHostSide(hostName); err != nil {
		return link, err
	}
	err = podNS.Do(func(ns.NetNS) error {
		var err error
		link.podMAC, err = setUpPodSide(ifName, addr)
		return err
	})
	if err != nil {
		return link, err
	}
	return link, addHostRoute(hostName, addr)
}

// enableIPForward turns on forwarding in the node's netns, the one the
// plugin runs in.
func enableIPForward() error {
	const key = "net/ipv4/ip_forward"
	if v, err := sysctl.Sysctl(key); err == nil && strings.TrimSpace(v) == "1" {
		return nil
	}
	if _, err := sysctl.Sysctl(key, "1"); err != nil {
		return fmt.Errorf("setting %s: %w", key, err)
	}
	return nil
}

// setUpHostSide sets the sysctls of the host side of the veth and brings it up.
func setUpHostSide(name string) error {
	for key, value := range hostSysctls(name) {
		if _, err := sysctl.Sysctl(key, value); err != nil {
			return fmt.Errorf("setting %s=%s: %w", key, value, err)
		}
	}
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", name, err)
	}
	return nil
}

// setUpPodSide gives the pod's interface its address as a /32 and routes
// everything through 169.254.1.1, and returns the interface's MAC. It runs
// in the pod's netns.
func setUpPodSide(ifName string, addr netip.Addr) (net.HardwareAddr, error) {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("finding %s in the pod: %w", ifName, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bringing %s up in the pod: %w", ifName, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(addr)}); err != nil {
		return nil, fmt.Errorf("adding %s/32 to %s in the pod: %w", addr, ifName, err)
	}
	gateway := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: podGateway, Mask: net.CIDRMask(32, 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteAdd(gateway); err != nil {
		return nil, fmt.Errorf("adding the route to %s in the pod: %w", podGateway, err)
	}
	def := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        podGateway,
	}
	if err := netlink.RouteAdd(def); err != nil {
		return nil, fmt.Errorf("adding the default route via %s in the pod: %w", podGateway, err)
	}
	return link.Attrs().HardwareAddr, nil
}

// addHostRoute routes the pod's address to the host side of its veth.
func addHostRoute(hostName string, addr netip.Addr) error {
	link, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("finding %s: %w", hostName, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(addr), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("adding the route %s/32 dev %s: %w", addr, hostName, err)
	}
	return nil
}

// deleteLink deletes the link called name in the current netns, if there is one.
func deleteLink(name string) error {
	link, err := netlinksafe.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

// deletePodVeth deletes the pod's veth from inside the pod's netns; the
// host side and its route go with it. A missing netns or interface, or an
// interface that is not a veth (so not ours), is left alone.
func deletePodVeth(netnsPath, ifName string) error {
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifName)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("finding %s in the pod: %w", ifName, err)
		}
		if link.Type() != "veth" {
			return nil
		}
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("deleting %s in the pod: %w", ifName, err)
		}
		return nil
	})
	if errors.As(err, new(ns.NSPathNotExistErr)) {
		return nil
	}
	return err
}

// deleteVethRoutedTo deletes the host-side veth that the node routes addr
// to, if there is one: the remains of a pod whose address GC released.
func deleteVethRoutedTo(addr netip.Addr) error {
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: hostPrefix(addr), Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("listing the routes to %s: %w", addr, err)
	}
	for _, r := range routes {
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil || !strings.HasPrefix(link.Attrs().Name, hostVethPrefix) {
			continue
		}
		if err := deleteLink(link.Attrs().Name); err != nil {
			return err
		}
	}
	return nil
}

// defaultRouteMTU is the MTU of the interface of the node's IPv4 default
// route, or defaultMTU when the node has none.
func defaultRouteMTU() (int, error) {
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("listing the node's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		index := r.LinkIndex
		if index == 0 && len(r.MultiPath) > 0 {
			index = r.MultiPath[0].LinkIndex
		}
		link, err := netlink.LinkByIndex(index)
		if err != nil {
			return 0, fmt.Errorf("finding the interface of the default route: %w", err)
		}
		return link.Attrs().MTU, nil
	}
	return defaultMTU, nil
}

// hostPrefix is addr as a /32.
func hostPrefix(addr netip.Addr) *net.IPNet {
	return &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
}
