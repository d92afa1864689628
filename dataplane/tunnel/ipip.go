package tunnel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// ipipName is the IPIP tunnel device, named as the kernel's fallback ipip device.
	ipipName = "tunl0"
	// ipipOverhead is the outer IPv4 header IPIP adds to every packet.
	ipipOverhead = 20
)

// ipipPath is which implementation carries IPIP on this kernel.
type ipipPath int

const (
	kernelPath ipipPath = iota
	userspacePath
)

// newIPIP sets up tunl0: the kernel's ipip device when the kernel has one, otherwise a TUN
// device served in userspace.
func newIPIP(h *netlink.Handle, node Node, underlay netlink.Link) (carrier, error) {
	mtu := underlay.Attrs().MTU - ipipOverhead
	link, err := h.LinkByName(ipipName)
	if err == nil {
		if link.Type() != "ipip" {
			return nil, fmt.Errorf("%s exists and is a %s device, not ipip", ipipName, link.Type())
		}
		return setUpKernelIPIP(h, link, false, node.TunnelAddr, mtu)
	}
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		return nil, fmt.Errorf("looking up %s: %w", ipipName, err)
	}

	addErr := h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: ipipName, MTU: mtu}})
	path, err := ipipPathFor(addErr)
	if err != nil {
		return nil, err
	}
	if path == userspacePath {
		return startUserspaceIPIP(h, node, mtu)
	}
	link, err = h.LinkByName(ipipName)
	if err != nil {
		return nil, fmt.Errorf("looking up %s after creating it: %w", ipipName, err)
	}
	return setUpKernelIPIP(h, link, addErr == nil, node.TunnelAddr, mtu)
}

// ipipPathFor picks the IPIP implementation from the answer to creating an ipip link named
// tunl0. The kernel answers EEXIST when loading the ipip module on demand made its fallback
// tunl0 first, and EOPNOTSUPP when it knows no ipip link kind at all.
func ipipPathFor(addErr error) (ipipPath, error) {
	switch {
	case addErr == nil, errors.Is(addErr, unix.EEXIST):
		return kernelPath, nil
	case errors.Is(addErr, unix.EOPNOTSUPP):
		return userspacePath, nil
	default:
		return 0, fmt.Errorf("creating ipip device %s: %w", ipipName, addErr)
	}
}

// kernelIPIP is the kernel's tunl0: routes through it "via <node IP> onlink" make the kernel
// send to that node, wrapped in an outer header of protocol 4.
type kernelIPIP struct {
	h       *netlink.Handle
	link    netlink.Link
	created bool
	addr    *netlink.Addr
}

func setUpKernelIPIP(h *netlink.Handle, link netlink.Link, created bool, tunnelAddr netip.Addr, mtu int) (*kernelIPIP, error) {
	k := &kernelIPIP{h: h, link: link, created: created}
	if tunnelAddr.IsValid() {
		k.addr = hostAddr(tunnelAddr)
	}
	if err := setUpTunnelLink(h, link, tunnelAddr, mtu); err != nil {
		return nil, errors.Join(err, k.close())
	}
	return k, nil
}

func (k *kernelIPIP) route(b Block) *netlink.Route {
	return gatewayRoute(b.CIDR, b.NodeIP, k.link.Attrs().Index, true)
}

func (k *kernelIPIP) addPeers([]Block) error         { return nil }
func (k *kernelIPIP) removeStalePeers([]Block) error { return nil }

// close deletes tunl0 if it was made here; the kernel's fallback tunl0 cannot be deleted, so
// it only loses the tunnel address.
func (k *kernelIPIP) close() error {
	if k.created {
		if err := k.h.LinkDel(k.link); err != nil {
			return fmt.Errorf("deleting %s: %w", ipipName, err)
		}
		return nil
	}
	if k.addr != nil {
		if err := k.h.AddrDel(k.link, k.addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s from %s: %w", k.addr.IPNet, ipipName, err)
		}
	}
	return nil
}

// setUpTunnelLink gives a tunnel link its MTU and tunnel address, and brings it up.
func setUpTunnelLink(h *netlink.Handle, link netlink.Link, tunnelAddr netip.Addr, mtu int) error {
	name := link.Attrs().Name
	if err := h.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("setting MTU %d on %s: %w", mtu, name, err)
	}
	if tunnelAddr.IsValid() {
		if err := h.AddrReplace(link, hostAddr(tunnelAddr)); err != nil {
			return fmt.Errorf("adding %s/32 to %s: %w", tunnelAddr, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, a.BitLen()))}
}
