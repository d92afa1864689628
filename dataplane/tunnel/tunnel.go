// Package tunnel programs the routes that carry pod traffic between the nodes of the reference
// dataplane, the way Calico does: a blackhole route for each IPAM block of the local node and,
// for each block of another node, a route through an IPIP tunnel (tunl0), through a VXLAN
// device (vxlan.calico) or straight over the underlay. Every route it installs carries routing
// protocol 12 (bird), which is how it tells its own routes from everybody else's.
//
// When the kernel cannot create an ipip link, tunl0 is a TUN device and the package
// encapsulates and decapsulates IPv4-in-IPv4 in userspace through a raw IPPROTO_IPIP socket,
// so that the underlay carries the same protocol-4 packets as with kernel IPIP.
package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
)

// Mode is how packets for the blocks of other nodes cross the underlay.
type Mode string

// The encapsulation modes, named as in Calico's IP pool settings.
const (
	// IPIP wraps each packet in an outer IPv4 header, protocol 4, from node to node.
	IPIP Mode = "ipip"
	// VXLAN wraps each packet in Ethernet, UDP port 4789 and VXLAN (VNI 4096) headers.
	VXLAN Mode = "vxlan"
	// NoEncap routes blocks straight to the owning node, which must share the underlay L2.
	NoEncap Mode = "none"
)

// Node is the local node: the one whose network namespace a Dataplane programs.
type Node struct {
	Name string
	// IP is the node's underlay address.
	IP netip.Addr
	// Interface is the underlay interface, such as "eth0".
	Interface string
	// TunnelAddr goes on tunl0 or vxlan.calico as a /32, usually an address from one of the
	// node's blocks. It is the source of packets the node itself sends to pods on other nodes,
	// and the node's VTEP IP in VXLAN mode, where it is required.
	TunnelAddr netip.Addr
	// VTEPMAC is the MAC address of vxlan.calico in VXLAN mode; when nil the kernel picks one,
	// which Dataplane.VTEPMAC reports so that it can be published to the other nodes.
	VTEPMAC net.HardwareAddr
	Mode    Mode
}

// Block is an IPAM block and the node that owns it.
type Block struct {
	CIDR   netip.Prefix
	Node   string
	NodeIP netip.Addr
	// VTEPMAC and VTEPIP are the owning node's vxlan.calico MAC and address; VXLAN mode
	// needs them for the blocks of other nodes.
	VTEPMAC net.HardwareAddr
	VTEPIP  netip.Addr
}

// carrier is how packets for remote blocks reach their node: the routes that lead to it and the
// per-node state it keeps besides routes.
type carrier interface {
	// route is the route to a block of another node.
	route(b Block) *netlink.Route
	// addPeers installs what routes to the blocks in remote rely on.
	addPeers(remote []Block) error
	// removeStalePeers removes what it keeps for nodes that own none of the blocks in remote,
	// once the routes to them are gone.
	removeStalePeers(remote []Block) error
	// close tears down the carrier's devices and sockets.
	close() error
}

// Dataplane owns the inter-node routes of one node's network namespace.
type Dataplane struct {
	node Node
	nl   *netlink.Handle

	mu      sync.Mutex
	carrier carrier
	closed  bool
}

// New sets up the tunnel device for node.Mode in the current network namespace, which stays
// the namespace the Dataplane programs from then on, whichever thread later calls it. It
// installs no route: call Sync with the blocks.
func New(node Node) (*Dataplane, error) {
	if err := checkNode(node); err != nil {
		return nil, err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	underlay, err := h.LinkByName(node.Interface)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("finding underlay interface %s: %w", node.Interface, err)
	}
	d := &Dataplane{node: node, nl: h}
	switch node.Mode {
	case IPIP:
		d.carrier, err = newIPIP(h, node, underlay)
	case VXLAN:
		d.carrier, err = newVXLAN(h, node, underlay)
	case NoEncap:
		d.carrier = &underlayRoutes{link: underlay}
	}
	if err != nil {
		h.Close()
		return nil, err
	}
	return d, nil
}

func checkNode(node Node) error {
	switch {
	case node.Name == "":
		return errors.New("node has no name")
	case !node.IP.Is4():
		return fmt.Errorf("node %s: underlay address %v is not IPv4", node.Name, node.IP)
	case node.Interface == "":
		return fmt.Errorf("node %s: no underlay interface", node.Name)
	case node.TunnelAddr.IsValid() && !node.TunnelAddr.Is4():
		return fmt.Errorf("node %s: tunnel address %v is not IPv4", node.Name, node.TunnelAddr)
	}
	switch node.Mode {
	case IPIP, NoEncap:
	case VXLAN:
		if !node.TunnelAddr.IsValid() {
			return fmt.Errorf("node %s: VXLAN mode needs a tunnel address for the VTEP", node.Name)
		}
		if node.VTEPMAC != nil && len(node.VTEPMAC) != 6 {
			return fmt.Errorf("node %s: VTEP MAC %v is not an Ethernet address", node.Name, node.VTEPMAC)
		}
	default:
		return fmt.Errorf("node %s: unknown encapsulation mode %q", node.Name, node.Mode)
	}
	return nil
}

// Sync makes the node's routes match blocks: a blackhole route for each block of the local
// node and a route through the carrier for each block of another node. It adds what is
// missing, fixes what differs and removes its own routes, neighbors and FDB entries for blocks
// and nodes that are no longer listed; it never changes a route it does not own. A block that
// is invalid, or whose CIDR already has a route that is not ours, is reported in the returned
// error and the other blocks are programmed all the same.
func (d *Dataplane) Sync(blocks []Block) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("syncing a closed tunnel dataplane")
	}

	var errs []error
	want := make(map[netip.Prefix]*netlink.Route, len(blocks))
	var remote []Block
	for _, b := range blocks {
		if err := d.checkBlock(b); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := want[b.CIDR]; dup {
			errs = append(errs, fmt.Errorf("block %s is listed twice", b.CIDR))
			continue
		}
		if b.Node == d.node.Name {
			want[b.CIDR] = blackhole(b.CIDR)
			continue
		}
		want[b.CIDR] = d.carrier.route(b)
		remote = append(remote, b)
	}

	if err := d.carrier.addPeers(remote); err != nil {
		errs = append(errs, err)
	}
	if err := syncRoutes(d.nl, want); err != nil {
		errs = append(errs, err)
	}
	if err := d.carrier.removeStalePeers(remote); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Dataplane) checkBlock(b Block) error {
	switch {
	case !b.CIDR.IsValid() || !b.CIDR.Addr().Is4() || b.CIDR != b.CIDR.Masked():
		return fmt.Errorf("block %v: not an IPv4 network", b.CIDR)
	case b.Node == "":
		return fmt.Errorf("block %s: no owning node", b.CIDR)
	case b.Node == d.node.Name:
		return nil
	case !b.NodeIP.Is4():
		return fmt.Errorf("block %s: node %s has no IPv4 underlay address", b.CIDR, b.Node)
	}
	if d.node.Mode == VXLAN && (!b.VTEPIP.Is4() || len(b.VTEPMAC) != 6) {
		return fmt.Errorf("block %s: node %s has no VTEP IPv4 and MAC address", b.CIDR, b.Node)
	}
	return nil
}

// VTEPMAC is the MAC address of vxlan.calico, or nil when the node does not use VXLAN.
func (d *Dataplane) VTEPMAC() net.HardwareAddr {
	if v, ok := d.carrier.(*vxlanDevice); ok {
		return v.link.Attrs().HardwareAddr
	}
	return nil
}

// Userspace tells whether tunl0 is a TUN device served by this process rather than the
// kernel's ipip device.
func (d *Dataplane) Userspace() bool {
	_, ok := d.carrier.(*userspaceIPIP)
	return ok
}

// Stats counts the packets of the userspace IPIP path; it is zero on every other path.
func (d *Dataplane) Stats() Stats {
	if u, ok := d.carrier.(*userspaceIPIP); ok {
		return u.stats.snapshot()
	}
	return Stats{}
}

// Close removes every route the Dataplane owns and the devices it made (for the userspace
// path it stops encapsulating and removes the TUN device), and returns any error that stopped
// the userspace path early. Calling it again does nothing.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	errs := []error{
		syncRoutes(d.nl, nil),
		d.carrier.close(),
	}
	d.nl.Close()
	return errors.Join(errs...)
}

// underlayRoutes is the no-encapsulation carrier: remote blocks are routed to their node's
// underlay address, which must be on the same L2 segment.
type underlayRoutes struct {
	link netlink.Link
}

func (u *underlayRoutes) route(b Block) *netlink.Route {
	return gatewayRoute(b.CIDR, b.NodeIP, u.link.Attrs().Index, false)
}

func (u *underlayRoutes) addPeers([]Block) error         { return nil }
func (u *underlayRoutes) removeStalePeers([]Block) error { return nil }
func (u *underlayRoutes) close() error                   { return nil }
