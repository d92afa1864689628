package tunnel

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lab is a throwaway cluster: nodes are network namespaces on one underlay (a veth between two
// nodes, a veth to nowhere for a lone node), each with pods wired as Calico's CNI plugin does: a
// veth, a /32 route to the pod on the node, and in the pod a default route via 169.254.1.1,
// which the node answers by proxy ARP.
type lab struct {
	nodes []*labNode
}

type labNode struct {
	name       string
	ns         ns.NetNS
	nl         *netlink.Handle
	ip         netip.Addr
	block      netip.Prefix
	tunnelAddr netip.Addr
	vtepMAC    net.HardwareAddr
	pods       []*labPod
	dp         *Dataplane
}

type labPod struct {
	ns ns.NetNS
	ip netip.Addr
}

// newLab builds nodes node1…nodeN (N is 1 or 2) at 192.168.10.101…, node i owning block
// 172.16.i.0/24 with tunnel address 172.16.i.0, and pods pods per node at 172.16.i.10….
func newLab(t *testing.T, nodes, pods int) *lab {
	t.Helper()
	l := &lab{}
	for i := 1; i <= nodes; i++ {
		n := &labNode{
			name:       fmt.Sprintf("node%d", i),
			ip:         netip.AddrFrom4([4]byte{192, 168, 10, byte(100 + i)}),
			block:      netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(i), 0}), 24),
			tunnelAddr: netip.AddrFrom4([4]byte{172, 16, byte(i), 0}),
			vtepMAC:    net.HardwareAddr{0x66, 0x00, 0x00, 0x00, 0x00, byte(i)},
		}
		n.ns, n.nl = newNetNS(t)
		l.nodes = append(l.nodes, n)
	}

	switch nodes {
	case 1:
		check(t, l.nodes[0].nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "switch0"}))
		linkUp(t, l.nodes[0].nl, "switch0")
	case 2:
		check(t, l.nodes[0].nl.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "eth0"},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(l.nodes[1].ns.Fd())),
		}))
	default:
		t.Fatalf("a lab has one or two nodes, not %d", nodes)
	}
	for i, n := range l.nodes {
		eth0 := linkUp(t, n.nl, "eth0")
		check(t, n.nl.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.ip, 24))}))
		sysctl(t, n.ns, "net/ipv4/ip_forward", "1")
		if pods > 0 {
			// Proxy ARP answers the pods for 169.254.1.1 only when the node has a route to it.
			check(t, n.nl.RouteAdd(&netlink.Route{Gw: net.IPv4(192, 168, 10, 1), LinkIndex: eth0.Attrs().Index}))
		}
		for j := range pods {
			n.addPod(t, netip.AddrFrom4([4]byte{172, 16, byte(i + 1), byte(10 + j)}), fmt.Sprintf("cali%d", j))
		}
	}
	for _, n := range l.nodes {
		waitCarrier(t, n.nl, "eth0")
		for j := range n.pods {
			waitCarrier(t, n.nl, fmt.Sprintf("cali%d", j))
		}
	}
	return l
}

// waitCarrier waits for a link to have carrier, which a veth gets a moment after both ends
// are up.
func waitCarrier(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		link, err := h.LinkByName(name)
		check(t, err)
		if link.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no carrier after 5 s", name)
		}
	}
}

// addPod wires a pod with address ip behind the host-side veth named host.
func (n *labNode) addPod(t *testing.T, ip netip.Addr, host string) {
	t.Helper()
	pod := &labPod{ip: ip}
	var podNL *netlink.Handle
	pod.ns, podNL = newNetNS(t)
	check(t, n.nl.LinkAdd(&netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(pod.ns.Fd())),
	}))
	hostLink := linkUp(t, n.nl, host)
	sysctl(t, n.ns, "net/ipv4/conf/"+host+"/proxy_arp", "1")
	check(t, n.nl.RouteAdd(&netlink.Route{
		Dst: ipNet(netip.PrefixFrom(ip, 32)), LinkIndex: hostLink.Attrs().Index, Scope: netlink.SCOPE_LINK,
	}))

	linkUp(t, podNL, "lo")
	eth0 := linkUp(t, podNL, "eth0")
	check(t, podNL.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(ip, 32))}))
	gateway := netip.MustParseAddr("169.254.1.1")
	check(t, podNL.RouteAdd(&netlink.Route{
		Dst: ipNet(netip.PrefixFrom(gateway, 32)), LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK,
	}))
	check(t, podNL.RouteAdd(&netlink.Route{Gw: gateway.AsSlice(), LinkIndex: eth0.Attrs().Index}))
	n.pods = append(n.pods, pod)
}

// newNetNS makes a network namespace, and a netlink handle in it, that the test removes.
func newNetNS(t *testing.T) (ns.NetNS, *netlink.Handle) {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		// Detach lazily: an `ip` command elsewhere that resolves netns names holds the mount
		// open for a moment, which makes a plain unmount fail with EBUSY.
		if err := unix.Unmount(n.Path(), unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting netns %s: %v", n.Path(), err)
		}
		if err := os.Remove(n.Path()); err != nil {
			t.Errorf("removing netns %s: %v", n.Path(), err)
		}
	})
	handle, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatalf("opening netns %s: %v", n.Path(), err)
	}
	defer handle.Close()
	h, err := netlink.NewHandleAt(handle)
	if err != nil {
		t.Fatalf("opening netlink in %s: %v", n.Path(), err)
	}
	t.Cleanup(h.Close)
	linkUp(t, h, "lo")
	return n, h
}

func linkUp(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	link, err := h.LinkByName(name)
	check(t, err)
	check(t, h.LinkSetUp(link))
	return link
}

func sysctl(t *testing.T, n ns.NetNS, key, value string) {
	t.Helper()
	check(t, n.Do(func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	}))
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// node is the Node that node's dataplane runs as in mode.
func (n *labNode) node(mode Mode) Node {
	return Node{Name: n.name, IP: n.ip, Interface: "eth0", TunnelAddr: n.tunnelAddr, VTEPMAC: n.vtepMAC, Mode: mode}
}

// blockOf is the node's block, as IPAM lists it.
func (n *labNode) blockOf() Block {
	return Block{CIDR: n.block, Node: n.name, NodeIP: n.ip, VTEPMAC: n.vtepMAC, VTEPIP: n.tunnelAddr}
}

// start runs a Dataplane for every node in mode, synced with every node's block, and closes
// them when the test ends.
func (l *lab) start(t *testing.T, mode Mode) {
	t.Helper()
	var blocks []Block
	for _, n := range l.nodes {
		blocks = append(blocks, n.blockOf())
	}
	for _, n := range l.nodes {
		n.dp = startDataplane(t, n.ns, n.node(mode))
		check(t, n.dp.Sync(blocks))
	}
}

// startDataplane runs New inside netns n and closes the Dataplane when the test ends.
func startDataplane(t *testing.T, n ns.NetNS, node Node) *Dataplane {
	t.Helper()
	var dp *Dataplane
	check(t, n.Do(func(ns.NetNS) error {
		var err error
		dp, err = New(node)
		return err
	}))
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("closing the dataplane of %s: %v", node.Name, err)
		}
	})
	return dp
}

// run runs a command inside netns n and returns its output.
func run(t *testing.T, n ns.NetNS, args ...string) string {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path()}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ping checks that from reaches to, waiting up to 5 s for two replies.
func ping(t *testing.T, from *labPod, to netip.Addr) {
	t.Helper()
	run(t, from.ns, "ping", "-n", "-c", "2", "-i", "0.2", "-w", "5", to.String())
}

// tcpEcho sends size random bytes from one pod to an echo server in another and checks that
// the same bytes come back.
func tcpEcho(t *testing.T, from, to *labPod, size int) {
	t.Helper()
	var ln net.Listener
	check(t, to.ns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(to.ip, 0).String())
		return err
	}))
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()

	var conn net.Conn
	check(t, from.ns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}))
	defer conn.Close()
	check(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
	sent := make([]byte, size)
	rand.Read(sent)
	writeErr := make(chan error, 1)
	go func() {
		_, err := conn.Write(sent)
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("TCP %s → %s: reading the echo: %v", from.ip, to.ip, err)
	}
	check(t, <-writeErr)
	if !bytes.Equal(got, sent) {
		t.Fatalf("TCP %s → %s: echoed %d bytes, want the %d sent", from.ip, to.ip, len(got), len(sent))
	}
}

// capture records every frame on one interface of a netns through an AF_PACKET socket.
type capture struct {
	f *os.File
}

func startCapture(t *testing.T, n ns.NetNS, ifname string) *capture {
	t.Helper()
	var fd int
	check(t, n.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto); err != nil {
			return fmt.Errorf("opening AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: link.Attrs().Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding AF_PACKET socket to %s: %w", ifname, err)
		}
		return nil
	}))
	c := &capture{f: os.NewFile(uintptr(fd), "capture-"+ifname)}
	t.Cleanup(func() { c.f.Close() })
	return c
}

// frames returns the frames captured so far.
func (c *capture) frames(t *testing.T) [][]byte {
	t.Helper()
	var frames [][]byte
	buf := make([]byte, 65536)
	for {
		check(t, c.f.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
		n, err := c.f.Read(buf)
		if err != nil {
			if !os.IsTimeout(err) {
				t.Fatalf("reading capture: %v", err)
			}
			return frames
		}
		frames = append(frames, slices.Clone(buf[:n]))
	}
}

// tcpdump prints frames as `tcpdump -n` with flags does, through a pcap file.
func tcpdump(t *testing.T, frames [][]byte, flags ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "capture.pcap")
	f, err := os.Create(file)
	check(t, err)
	w := pcapgo.NewWriter(f)
	check(t, w.WriteFileHeader(65536, layers.LinkTypeEthernet))
	for _, frame := range frames {
		ci := gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(frame), Length: len(frame)}
		check(t, w.WritePacket(ci, frame))
	}
	check(t, f.Close())
	out, err := exec.Command("tcpdump", append([]string{"-n", "-r", file}, flags...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	return string(out)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ownedRouteLines is what `ip -4 route` prints for the routes tagged proto bird.
func ownedRouteLines(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var lines []string
	for line := range strings.Lines(run(t, n, "ip", "-4", "route", "show", "table", "main")) {
		if line = strings.TrimSpace(line); strings.Contains(line, "proto bird") {
			lines = append(lines, line)
		}
	}
	slices.Sort(lines)
	return lines
}
