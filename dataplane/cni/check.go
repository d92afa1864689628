package cni

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
)

// cmdCheck verifies that what ADD made (as its result, prevResult,
// describes) is still in place: the pod's interface, address and routes,
// the host veth with its MAC, sysctls and route, and the address's
// allocation in the datastore.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("parsing prevResult: %v", err), "")
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult, the result of ADD", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("converting prevResult: %v", err), "")
	}
	hostName, addr, err := ourAttachment(prev, args.IfName)
	if err != nil {
		return err
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("opening the pod netns %s: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	if err := podNS.Do(func(ns.NetNS) error { return checkPodSide(args.IfName, addr) }); err != nil {
		return err
	}
	if err := checkHostSide(hostName, addr); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	store, err := conf.datastore()
	if err != nil {
		return err
	}
	held, ok, err := store.AddressOf(ctx, args.ContainerID)
	switch {
	case err != nil:
		return cniError(err)
	case !ok:
		return fmt.Errorf("container %s holds no address in the IPAM datastore", args.ContainerID)
	case held != addr:
		return fmt.Errorf("container %s holds %s in the IPAM datastore, but its result says %s", args.ContainerID, held, addr)
	}
	return nil
}

// ourAttachment finds, in the result of ADD, the host veth and the address
// of the pod's interface ifName.
func ourAttachment(prev *current.Result, ifName string) (string, netip.Addr, error) {
	var hostName string
	for _, iface := range prev.Interfaces {
		if iface.Sandbox == "" && strings.HasPrefix(iface.Name, hostVethPrefix) {
			hostName = iface.Name
		}
	}
	if hostName == "" {
		return "", netip.Addr{}, fmt.Errorf("prevResult names no host veth")
	}
	for _, ip := range prev.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(prev.Interfaces) ||
			prev.Interfaces[*ip.Interface].Name != ifName {
			continue
		}
		if addr, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok {
			return hostName, addr, nil
		}
	}
	return "", netip.Addr{}, fmt.Errorf("prevResult has no IPv4 address on %s", ifName)
}

// checkPodSide checks, in the pod's netns, the interface, its /32 and its
// two routes.
func checkPodSide(ifName string, addr netip.Addr) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", ifName, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("pod interface %s is a %s, not a veth", ifName, link.Type())
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the addresses of %s in the pod: %w", ifName, err)
	}
	want := hostPrefix(addr)
	found := false
	for _, a := range addrs {
		found = found || a.IPNet.String() == want.String()
	}
	if !found {
		return fmt.Errorf("pod interface %s lacks %s", ifName, want)
	}
	if err := checkRoute(link, &net.IPNet{IP: podGateway, Mask: net.CIDRMask(32, 32)}, nil, netlink.SCOPE_LINK); err != nil {
		return fmt.Errorf("in the pod: %w", err)
	}
	if err := checkRoute(link, nil, podGateway, netlink.SCOPE_UNIVERSE); err != nil {
		return fmt.Errorf("in the pod: %w", err)
	}
	return nil
}

// checkHostSide checks, in the node's netns, the host veth, its MAC, state
// and sysctls, and the route to the pod.
func checkHostSide(hostName string, addr netip.Addr) error {
	link, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostName, err)
	}
	if !bytes.Equal(link.Attrs().HardwareAddr, hostVethMAC) {
		return fmt.Errorf("host veth %s has MAC %s, want %s", hostName, link.Attrs().HardwareAddr, hostVethMAC)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", hostName)
	}
	for key, want := range hostSysctls(hostName) {
		got, err := sysctl.Sysctl(key)
		if err != nil {
			return fmt.Errorf("reading %s: %w", key, err)
		}
		if strings.TrimSpace(got) != want {
			return fmt.Errorf("%s is %s, want %s", key, strings.TrimSpace(got), want)
		}
	}
	return checkRoute(link, hostPrefix(addr), nil, netlink.SCOPE_LINK)
}

// checkRoute checks that a route to dst (nil for the default route) via gw
// with the given scope goes out of link.
func checkRoute(link netlink.Link, dst *net.IPNet, gw net.IP, scope netlink.Scope) error {
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the routes of %s: %w", link.Attrs().Name, err)
	}
	for _, r := range routes {
		if sameDst(r.Dst, dst) && r.Gw.Equal(gw) && r.Scope == scope {
			return nil
		}
	}
	what := "default"
	if dst != nil {
		what = dst.String()
	}
	if gw != nil {
		what += " via " + gw.String()
	}
	return fmt.Errorf("route %s dev %s scope %s is missing", what, link.Attrs().Name, scope)
}

// sameDst compares route destinations, where nil and 0.0.0.0/0 both mean
// the default route.
func sameDst(a, b *net.IPNet) bool {
	isDefault := func(n *net.IPNet) bool {
		if n == nil {
			return true
		}
		ones, _ := n.Mask.Size()
		return ones == 0
	}
	if isDefault(a) || isDefault(b) {
		return isDefault(a) && isDefault(b)
	}
	return a.String() == b.String()
}
