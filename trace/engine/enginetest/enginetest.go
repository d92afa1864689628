// Package enginetest builds, for the tests of the trace engine and of the
// command that runs it, Kubernetes nodes out of throwaway network
// namespaces: a node with an underlay eth0, pods wired as Calico's CNI
// plugin wires them (a cali… veth with MAC ee:ee:ee:ee:ee:ee, proxy ARP,
// a /32 route, a default route via 169.254.1.1 in the pod), and
// kube-proxy's and Calico's rules for a ClusterIP service. Everything is
// removed when the test ends, even when it fails.
package enginetest

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kubectl-nettrace/nettrace/internal/testns"
)

// NetnsPrefix starts the names of the namespaces, so that a leftover one
// is easy to tell from another package's.
const NetnsPrefix = "nettrace-engine-test-"

var netnsCount atomic.Int32

// Netns is a named network namespace, as a CNI runtime makes one for a pod.
type Netns struct {
	ns.NetNS
	Name string
}

// NewNetns makes a namespace with its loopback up, removed when t ends.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	n := testns.New(t, NetnsPrefix)
	return &Netns{NetNS: n, Name: testns.Name(n)}
}

// Run runs a command inside the namespace and returns its output.
func (n *Netns) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return n.RunInput(t, "", name, args...)
}

// RunInput is Run with stdin as the command's input.
func (n *Netns) RunInput(t testing.TB, stdin, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path(), name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s in %s: %v: %s", name, strings.Join(args, " "), n.Name, err, stderr.String())
	}
	return string(out)
}

// In runs fn on a thread inside the namespace.
func (n *Netns) In(t testing.TB, fn func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// Sysctl sets a sysctl, such as "net/ipv4/ip_forward", inside the namespace.
func (n *Netns) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	n.In(t, func() error { return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644) })
}

// Node is a Kubernetes node as the lab makes one: a namespace that
// forwards, with an underlay eth0 on 192.168.10.0/24 (see Connect) and pods.
type Node struct {
	Name  string
	Netns *Netns
	IP    netip.Addr
	Pods  []*Pod
}

// Pod is a pod's namespace, its address and the node's end of its veth.
type Pod struct {
	Netns *Netns
	IP    netip.Addr
	Veth  string
}

// ProxyARPGateway is the pods' default gateway, which the node answers by
// proxy ARP.
var ProxyARPGateway = netip.MustParseAddr("169.254.1.1")

// NewNode makes a node's namespace, forwarding, without interfaces yet.
func NewNode(t testing.TB, name, ip string) *Node {
	t.Helper()
	n := &Node{Name: name, Netns: NewNetns(t), IP: netip.MustParseAddr(ip)}
	n.Netns.Sysctl(t, "net/ipv4/ip_forward", "1")
	return n
}

// Connect joins the eth0 of two nodes with a veth pair; with b nil, a's
// eth0 leads to a switch namespace of its own. Each eth0 gets its node's
// address /24, a MAC made of it (02:00:c0:a8:…) and a default route via
// 192.168.10.1, which proxy ARP needs to answer for 169.254.1.1.
func Connect(t testing.TB, a, b *Node) {
	t.Helper()
	peerNetns, peerName := (*Netns)(nil), "sw0"
	if b != nil {
		peerNetns, peerName = b.Netns, "eth0"
	} else {
		peerNetns = NewNetns(t)
	}
	a.Netns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", peerName, "netns", peerNetns.Name)
	peerNetns.Run(t, "ip", "link", "set", peerName, "up")
	for _, n := range []*Node{a, b} {
		if n != nil {
			n.setUpEth0(t)
		}
	}
}

// setUpEth0 gives the node's eth0 its address, MAC and default route.
func (n *Node) setUpEth0(t testing.TB) {
	t.Helper()
	n.Netns.Run(t, "ip", "link", "set", "eth0", "address", macOf("02:00", n.IP))
	n.Netns.Run(t, "ip", "addr", "add", n.IP.String()+"/24", "dev", "eth0")
	n.Netns.Run(t, "ip", "link", "set", "eth0", "up")
	n.Netns.Run(t, "ip", "route", "add", "default", "via", Gateway.String(), "dev", "eth0")
}

// Gateway is the nodes' default gateway.
var Gateway = netip.MustParseAddr("192.168.10.1")

// OutsideIP is the address of a server outside the cluster, beyond the
// nodes' gateway.
const OutsideIP = "203.0.113.10"

// Outside is the network beyond a node's gateway: a namespace at the other
// end of the node's eth0 that holds the gateway's address, 192.168.10.1,
// and OutsideIP. It routes only the nodes' subnet back: a pod's packet
// reaches it, and is answered, only when the node masquerades it.
type Outside struct {
	Netns *Netns
	IP    netip.Addr
}

// ConnectOutside joins the node's eth0, set up as Connect does, to the
// outside, whose end, gw0, has a MAC made of the gateway's address.
func ConnectOutside(t testing.TB, n *Node) *Outside {
	t.Helper()
	o := &Outside{Netns: NewNetns(t), IP: netip.MustParseAddr(OutsideIP)}
	n.Netns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "gw0", "netns", o.Netns.Name)
	o.Netns.Run(t, "ip", "link", "set", "gw0", "address", macOf("02:00", Gateway))
	o.Netns.Run(t, "ip", "addr", "add", Gateway.String()+"/24", "dev", "gw0")
	o.Netns.Run(t, "ip", "addr", "add", OutsideIP+"/32", "dev", "gw0")
	o.Netns.Run(t, "ip", "link", "set", "gw0", "up")
	n.setUpEth0(t)
	waitUp(t, n.Netns, "eth0")
	return o
}

// Listen accepts TCP connections on port at the outside server's address,
// and closes them.
func (o *Outside) Listen(t testing.TB, port int) { listenTCP(t, o.Netns, o.IP, port) }

// AddPod wires a pod as Calico does: a veth whose node end, veth, has
// Calico's MAC ee:ee:ee:ee:ee:ee, proxy ARP without delay and a /32 route
// to the pod; in the pod, eth0 with ip/32, a MAC made of it (0a:58:ac:10:…)
// and a default route via 169.254.1.1.
func (n *Node) AddPod(t testing.TB, ip, veth string) *Pod {
	t.Helper()
	p := &Pod{Netns: NewNetns(t), IP: netip.MustParseAddr(ip), Veth: veth}
	n.Netns.Run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.Netns.Name)
	n.Netns.Run(t, "ip", "link", "set", veth, "address", "ee:ee:ee:ee:ee:ee", "up")
	n.Netns.Sysctl(t, "net/ipv4/conf/"+veth+"/proxy_arp", "1")
	n.Netns.Sysctl(t, "net/ipv4/neigh/"+veth+"/proxy_delay", "0")
	n.Netns.Run(t, "ip", "route", "add", ip+"/32", "dev", veth, "scope", "link")
	p.Netns.Run(t, "ip", "link", "set", "eth0", "address", macOf("0a:58", p.IP))
	p.Netns.Run(t, "ip", "addr", "add", ip+"/32", "dev", "eth0")
	p.Netns.Run(t, "ip", "link", "set", "eth0", "up")
	p.Netns.Run(t, "ip", "route", "add", ProxyARPGateway.String(), "dev", "eth0", "scope", "link")
	p.Netns.Run(t, "ip", "route", "add", "default", "via", ProxyARPGateway.String(), "dev", "eth0")
	waitUp(t, n.Netns, veth)
	n.Pods = append(n.Pods, p)
	return p
}

// macOf is the MAC of an interface with address ip: two bytes of prefix and
// the address, so that ARP replies read the same in every run.
func macOf(prefix string, ip netip.Addr) string {
	a := ip.As4()
	return fmt.Sprintf("%s:%02x:%02x:%02x:%02x", prefix, a[0], a[1], a[2], a[3])
}

// waitUp waits until a veth has carrier, a moment after both ends are up.
func waitUp(t testing.TB, n *Netns, name string) {
	t.Helper()
	handle, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer handle.Close()
	h, err := netlink.NewHandleAt(handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if link.Attrs().OperState == netlink.OperUp {
			return
		}
	}
	t.Fatalf("%s has no carrier after 5 s", name)
}

// Listen accepts TCP connections on port in the pod, and closes them.
func (p *Pod) Listen(t testing.TB, port int) { listenTCP(t, p.Netns, p.IP, port) }

// listenTCP accepts TCP connections on ip and port inside n, and closes
// them, until the test ends.
func listenTCP(t testing.TB, n *Netns, ip netip.Addr, port int) {
	t.Helper()
	var ln net.Listener
	n.In(t, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(ip, uint16(port)).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// EchoUDP answers each UDP datagram to port in the pod with the same
// payload, delay after it came: a server that takes its time, as a DNS
// forwarder asking upstream does.
func (p *Pod) EchoUDP(t testing.TB, port int, delay time.Duration) {
	t.Helper()
	var conn *net.UDPConn
	p.Netns.In(t, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.IP, uint16(port))))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			payload := append([]byte(nil), buf[:n]...)
			time.AfterFunc(delay, func() { conn.WriteToUDPAddrPort(payload, from) })
		}
	}()
}

// Dial connects from the pod to dst and closes the connection: the live
// traffic of a live trace.
func (p *Pod) Dial(ctx context.Context, dst string) error {
	return p.Netns.Do(func(ns.NetNS) error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: p.IP.AsSlice()}}
		c, err := d.DialContext(ctx, "tcp4", dst)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// The addresses of the cluster, as its rules use them: the node, the
// client and the server pod, and the ClusterIP of the service whose only
// endpoint is the server.
const (
	NodeName    = "k8s-w1"
	NodeIP      = "192.168.10.101"
	ClientIP    = "172.16.1.10"
	ClientVeth  = "calia1b2c3d4e5f"
	ServerIP    = "172.16.1.11"
	ServerVeth  = "cali0f1e2d3c4b5"
	ServiceAddr = "10.96.0.100:80"
)

// Rules are kube-proxy's rules for the service default/web (KUBE-SERVICES
// → KUBE-SVC → KUBE-SEP DNAT to the server, KUBE-MARK-MASQ,
// KUBE-POSTROUTING MASQUERADE, KUBE-FORWARD) and Calico's forward rules:
// TCP to port 81 is rejected with a reset ("policy default/deny-81"), to
// port 82 dropped ("policy default/drop-82"), and the rest from and to the
// pods accepted; for iptables-legacy-restore or iptables-nft-restore.
//
//go:embed node.rules
var Rules string

// Cluster is one node, k8s-w1, with a client and a server pod, each
// listening on TCP port 80, and Rules loaded with one iptables backend.
type Cluster struct {
	Node           *Node
	Client, Server *Pod
}

// NewCluster builds the cluster, with backend "legacy" or "nft".
func NewCluster(t testing.TB, backend string) *Cluster {
	t.Helper()
	n := NewNode(t, NodeName, NodeIP)
	Connect(t, n, nil)
	c := &Cluster{Node: n, Client: n.AddPod(t, ClientIP, ClientVeth), Server: n.AddPod(t, ServerIP, ServerVeth)}
	c.Server.Listen(t, 80)
	c.Client.Listen(t, 80)
	n.Netns.RunInput(t, Rules, "iptables-"+backend+"-restore")
	return c
}

// savedCounters and saveComments are what changes in iptables-save output
// between two identical rulesets.
var (
	savedCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	saveComments  = regexp.MustCompile(`(?m)^#.*\n`)
)

// NetfilterState is everything a trace may change in a node's namespace:
// the nf_log binding, both iptables backends and the nftables ruleset.
func NetfilterState(t testing.TB, n *Netns) string {
	t.Helper()
	var nfLog []byte
	n.In(t, func() error {
		var err error
		nfLog, err = os.ReadFile("/proc/sys/net/netfilter/nf_log/2")
		return err
	})
	clean := func(s string) string {
		return savedCounters.ReplaceAllString(saveComments.ReplaceAllString(s, ""), "[0:0]")
	}
	return fmt.Sprintf("nf_log/2: %s\n--- iptables-legacy-save\n%s--- iptables-nft-save\n%s--- nft list ruleset\n%s",
		strings.TrimSpace(string(nfLog)), clean(n.Run(t, "iptables-legacy-save")), clean(n.Run(t, "iptables-nft-save")),
		n.Run(t, "nft", "--stateless", "list", "ruleset"))
}
