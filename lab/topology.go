package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsPrefix starts the name of every network namespace the lab creates:
// nodes, pods and the outside world. `down` removes all of them.
const NetnsPrefix = "nettrace-"

// HostLink is the host's interface on the underlay; the host reaches the API
// server through it.
const HostLink = "nettrace0"

// underlayMTU is the MTU of the underlay, as on a plain Ethernet network.
const underlayMTU = 1500

// Node is one lab node: a network namespace with eth0 on the underlay.
type Node struct {
	Name string
	IP   netip.Addr
	// Master is the control-plane node, which runs etcd and the control plane.
	Master bool
}

// Netns is the name of the node's network namespace.
func (n Node) Netns() string { return NetnsPrefix + n.Name }

// Topology is the lab's network: an underlay bridge in the outside world's
// netns, one netns per node, and a link from the host.
type Topology struct {
	Underlay netip.Prefix
	// Gateway is the outside world's address on the underlay: the nodes'
	// default route and the external client's source.
	Gateway netip.Addr
	// HostIP is the host's address on the underlay.
	HostIP netip.Addr
	Nodes  []Node
}

// ExternalNetns is the outside world: the underlay bridge, the router, the
// upstream DNS server and the external client live there.
const ExternalNetns = NetnsPrefix + "external"

// externalBridge is the underlay bridge inside ExternalNetns.
const externalBridge = "br-underlay"

// Addresses inside the outside world that the lab's tests and examples use.
// They come from the documentation ranges (RFC 5737), live on the loopback
// device of ExternalNetns, and are never routed off the machine.
var (
	UpstreamDNSIP = netip.MustParseAddr("198.51.100.53")
	ExternalWebIP = netip.MustParseAddr("203.0.113.100")
)

// NewTopology lays out n nodes on underlay as the seed does: k8s-m at .10,
// then k8s-w1 at .101, k8s-w2 at .102 and so on.
func NewTopology(n int, underlay netip.Prefix) (*Topology, error) {
	if n < 1 || n > 100 {
		return nil, fmt.Errorf("--nodes %d: want 1 to 100", n)
	}
	if !underlay.Addr().Is4() || underlay.Bits() > 24 {
		return nil, fmt.Errorf("--underlay %s: want an IPv4 prefix of /24 or wider", underlay)
	}
	underlay = underlay.Masked()
	at := func(host int) netip.Addr {
		b := underlay.Addr().As4()
		b[3] = byte(host)
		return netip.AddrFrom4(b)
	}
	t := &Topology{Underlay: underlay, Gateway: at(1), HostIP: at(254)}
	t.Nodes = append(t.Nodes, Node{Name: "k8s-m", IP: at(10), Master: true})
	for i := 1; i < n; i++ {
		t.Nodes = append(t.Nodes, Node{Name: fmt.Sprintf("k8s-w%d", i), IP: at(100 + i)})
	}
	return t, nil
}

// Master returns the control-plane node.
func (t *Topology) Master() Node { return t.Nodes[0] }

// Node returns the node called name.
func (t *Topology) Node(name string) (Node, bool) {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Create builds the network, keeping whatever part already exists.
func (t *Topology) Create() error {
	ext, err := ensureNetns(ExternalNetns)
	if err != nil {
		return err
	}
	defer ext.Close()
	if err := t.createExternal(ext); err != nil {
		return fmt.Errorf("outside world: %w", err)
	}
	if err := t.createHostLink(ext); err != nil {
		return fmt.Errorf("host link: %w", err)
	}
	for _, n := range t.Nodes {
		if err := t.createNode(ext, n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

// createExternal sets up the outside world: the underlay bridge with the
// gateway address, and the "internet" addresses.
func (t *Topology) createExternal(ext netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ext)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	br, err := ensureLink(h, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: externalBridge, MTU: underlayMTU}})
	if err != nil {
		return err
	}
	if err := ensureAddr(h, br, netip.PrefixFrom(t.Gateway, t.Underlay.Bits())); err != nil {
		return err
	}
	// The "internet" addresses live on the loopback device: this kernel
	// has no dummy interfaces, and lo delivers them just as well.
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	for _, a := range []netip.Addr{UpstreamDNSIP, ExternalWebIP} {
		if err := ensureAddr(h, lo, netip.PrefixFrom(a, 32)); err != nil {
			return err
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("setting %s up: %w", externalBridge, err)
	}
	return writeSysctl(ExternalNetns, "net/ipv4/ip_forward", "1")
}

// createHostLink joins the host to the underlay with a veth pair: HostLink
// in the host's netns, host0 on the bridge.
func (t *Topology) createHostLink(ext netns.NsHandle) error {
	if _, err := netlink.LinkByName(HostLink); err != nil {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostLink, MTU: underlayMTU}, PeerName: "host0", PeerNamespace: netlink.NsFd(ext)}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding %s: %w", HostLink, err)
		}
	}
	host, err := netlink.LinkByName(HostLink)
	if err != nil {
		return fmt.Errorf("finding %s: %w", HostLink, err)
	}
	if err := ensureAddr(nil, host, netip.PrefixFrom(t.HostIP, t.Underlay.Bits())); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("setting %s up: %w", HostLink, err)
	}
	return enslave(ext, "host0")
}

// createNode creates the node's netns with eth0 on the underlay and a
// default route through the outside world.
func (t *Topology) createNode(ext netns.NsHandle, n Node) error {
	nodeNS, err := ensureNetns(n.Netns())
	if err != nil {
		return err
	}
	defer nodeNS.Close()
	h, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	extH, err := netlink.NewHandleAt(ext)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer extH.Close()
	bridgePort := "v-" + n.Name
	if _, err := h.LinkByName("eth0"); err != nil {
		// Create the pair in the outside world, then move eth0 to the node.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: underlayMTU, Namespace: netlink.NsFd(nodeNS)}, PeerName: bridgePort}
		if err := extH.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding eth0: %w", err)
		}
	}
	if err := enslave(ext, bridgePort); err != nil {
		return err
	}
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0: %w", err)
	}
	if err := ensureAddr(h, eth0, netip.PrefixFrom(n.IP, t.Underlay.Bits())); err != nil {
		return err
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("setting eth0 up: %w", err)
	}
	def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: t.Gateway.AsSlice()}
	if err := h.RouteReplace(def); err != nil {
		return fmt.Errorf("default route via %s: %w", t.Gateway, err)
	}
	return writeSysctl(n.Netns(), "net/ipv4/ip_forward", "1")
}

// Destroy removes every lab netns and the host link. Processes still inside
// a netns must be stopped first, or the netns lingers until they exit.
func Destroy() error {
	var errs []error
	if l, err := netlink.LinkByName(HostLink); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", HostLink, err))
		}
	}
	names, err := LabNetns()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := netns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("removing netns %s: %w", name, err))
		}
	}
	// The pods' resolv.conf and hosts, including those of netns already gone.
	leftovers, _ := filepath.Glob(filepath.Join("/etc/netns", NetnsPrefix+"*"))
	for _, dir := range leftovers {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// LabNetns lists the named network namespaces that belong to the lab.
func LabNetns() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing /run/netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), NetnsPrefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// NetnsPath is the bind-mount path of a named network namespace.
func NetnsPath(name string) string { return filepath.Join("/run/netns", name) }

func ensureNetns(name string) (netns.NsHandle, error) {
	if h, err := netns.GetFromName(name); err == nil {
		return h, nil
	}
	// NewNamed switches the calling thread into the new netns; create it
	// from a thread of its own and come back.
	var h netns.NsHandle
	err := inThread(func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("creating netns %s: %w", name, err)
	}
	return h, nil
}

func ensureLink(h *netlink.Handle, l netlink.Link) (netlink.Link, error) {
	if existing, err := h.LinkByName(l.Attrs().Name); err == nil {
		return existing, nil
	}
	if err := h.LinkAdd(l); err != nil {
		return nil, fmt.Errorf("adding %s: %w", l.Attrs().Name, err)
	}
	return h.LinkByName(l.Attrs().Name)
}

func ensureAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := h.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("adding %s to %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

// enslave attaches the outside world's interface name to the underlay bridge.
func enslave(ext netns.NsHandle, name string) error {
	h, err := netlink.NewHandleAt(ext)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	port, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	br, err := h.LinkByName(externalBridge)
	if err != nil {
		return fmt.Errorf("finding %s: %w", externalBridge, err)
	}
	if err := h.LinkSetMasterByIndex(port, br.Attrs().Index); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", name, externalBridge, err)
	}
	if err := h.LinkSetUp(port); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}
