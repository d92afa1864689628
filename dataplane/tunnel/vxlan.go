package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// vxlanName is the VXLAN device, named as on a Calico node.
	vxlanName = "vxlan.calico"
	vxlanVNI  = 4096
	vxlanPort = 4789
	// vxlanOverhead is the outer Ethernet, IPv4, UDP and VXLAN headers.
	vxlanOverhead = 50
)

// vxlanDevice is vxlan.calico: routes through it go "via <remote VTEP IP> onlink"; a
// permanent neighbor entry gives that VTEP IP its MAC and a permanent FDB entry sends that MAC
// to the remote node's underlay address, so the kernel never ARPs or floods for a VTEP.
type vxlanDevice struct {
	h    *netlink.Handle
	link netlink.Link
}

func newVXLAN(h *netlink.Handle, node Node, underlay netlink.Link) (*vxlanDevice, error) {
	mtu := underlay.Attrs().MTU - vxlanOverhead
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: vxlanName, MTU: mtu, HardwareAddr: node.VTEPMAC},
		VxlanId:      vxlanVNI,
		VtepDevIndex: underlay.Attrs().Index,
		SrcAddr:      node.IP.AsSlice(),
		Port:         vxlanPort,
		Learning:     false,
	}
	existing, err := h.LinkByName(vxlanName)
	var notFound netlink.LinkNotFoundError
	switch {
	case err == nil && sameVXLAN(existing, want):
	case err == nil:
		if err := h.LinkDel(existing); err != nil {
			return nil, fmt.Errorf("deleting mismatched %s: %w", vxlanName, err)
		}
		fallthrough
	case errors.As(err, &notFound):
		if err := h.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("creating %s: %w", vxlanName, err)
		}
	default:
		return nil, fmt.Errorf("looking up %s: %w", vxlanName, err)
	}

	link, err := h.LinkByName(vxlanName)
	if err != nil {
		return nil, fmt.Errorf("looking up %s: %w", vxlanName, err)
	}
	v := &vxlanDevice{h: h, link: link}
	if err := setUpTunnelLink(h, link, node.TunnelAddr, mtu); err != nil {
		return nil, errors.Join(err, v.close())
	}
	return v, nil
}

// sameVXLAN tells whether an existing link is the VXLAN device wanted, so it can be kept.
func sameVXLAN(existing netlink.Link, want *netlink.Vxlan) bool {
	v, ok := existing.(*netlink.Vxlan)
	return ok &&
		v.VxlanId == want.VxlanId &&
		v.Port == want.Port &&
		v.VtepDevIndex == want.VtepDevIndex &&
		v.SrcAddr.Equal(want.SrcAddr) &&
		v.Learning == want.Learning &&
		(want.HardwareAddr == nil || bytes.Equal(v.HardwareAddr, want.HardwareAddr))
}

func (v *vxlanDevice) route(b Block) *netlink.Route {
	return gatewayRoute(b.CIDR, b.VTEPIP, v.link.Attrs().Index, true)
}

// vtep is a remote VXLAN tunnel endpoint.
type vtep struct {
	ip     netip.Addr
	mac    net.HardwareAddr
	nodeIP netip.Addr
}

// vteps lists the endpoints of the nodes that own remote blocks, once each.
func vteps(remote []Block) map[netip.Addr]vtep {
	byIP := make(map[netip.Addr]vtep)
	for _, b := range remote {
		byIP[b.VTEPIP] = vtep{ip: b.VTEPIP, mac: b.VTEPMAC, nodeIP: b.NodeIP}
	}
	return byIP
}

func (v *vxlanDevice) neighbor(p vtep) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    v.link.Attrs().Index,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           p.ip.AsSlice(),
		HardwareAddr: p.mac,
	}
}

func (v *vxlanDevice) fdbEntry(p vtep) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    v.link.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           p.nodeIP.AsSlice(),
		HardwareAddr: p.mac,
	}
}

// addPeers adds or fixes the neighbor and FDB entries of every remote VTEP.
func (v *vxlanDevice) addPeers(remote []Block) error {
	var errs []error
	for _, p := range vteps(remote) {
		if err := v.h.NeighSet(v.neighbor(p)); err != nil {
			errs = append(errs, fmt.Errorf("adding neighbor %s lladdr %s on %s: %w", p.ip, p.mac, vxlanName, err))
		}
		if err := v.h.NeighSet(v.fdbEntry(p)); err != nil {
			errs = append(errs, fmt.Errorf("adding FDB entry %s dst %s on %s: %w", p.mac, p.nodeIP, vxlanName, err))
		}
	}
	return errors.Join(errs...)
}

// removeStalePeers deletes the permanent neighbor entries and the FDB entries of vxlan.calico
// that belong to no remote VTEP. The device is ours, so every such entry is ours too.
func (v *vxlanDevice) removeStalePeers(remote []Block) error {
	want := vteps(remote)
	wantMAC := make(map[string]bool, len(want))
	for _, p := range want {
		wantMAC[p.mac.String()] = true
	}

	var errs []error
	neighbors, err := v.list(unix.AF_INET)
	if err != nil {
		return err
	}
	for _, n := range neighbors {
		ip, _ := netip.AddrFromSlice(n.IP)
		if _, ok := want[ip.Unmap()]; ok || n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		if err := v.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("deleting neighbor %s on %s: %w", n.IP, vxlanName, err))
		}
	}

	fdb, err := v.list(unix.AF_BRIDGE)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, n := range fdb {
		if wantMAC[n.HardwareAddr.String()] {
			continue
		}
		if err := v.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("deleting FDB entry %s on %s: %w", n.HardwareAddr, vxlanName, err))
		}
	}
	return errors.Join(errs...)
}

// list dumps the entries of one family on vxlan.calico, retrying a dump a change interrupted.
func (v *vxlanDevice) list(family int) ([]netlink.Neigh, error) {
	var err error
	for range dumpRetries {
		var entries []netlink.Neigh
		entries, err = v.h.NeighList(v.link.Attrs().Index, family)
		if err == nil {
			return entries, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("listing family %d neighbors of %s: %w", family, vxlanName, err)
}

// close deletes vxlan.calico, and with it its neighbor and FDB entries.
func (v *vxlanDevice) close() error {
	if err := v.h.LinkDel(v.link); err != nil {
		return fmt.Errorf("deleting %s: %w", vxlanName, err)
	}
	return nil
}
