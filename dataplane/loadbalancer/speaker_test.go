package loadbalancer

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// The test underlay, as in the lab.
const (
	lbIP       = "192.168.10.200"
	clientIP   = "192.168.10.50"
	servedPort = 8080
)

// l2Net is a throwaway layer 2 network: a bridge in its own netns, and
// hosts (netns with eth0 on the bridge). Everything goes with the test.
type l2Net struct {
	t      *testing.T
	prefix string
	bridge string // netns name
}

// host is one netns on the bridge.
type host struct {
	netns string
	ip    string
	mac   net.HardwareAddr
}

func (h host) path() string { return "/run/netns/" + h.netns }

func newL2Net(t *testing.T) *l2Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces and needs root")
	}
	var random [4]byte
	if _, err := rand.Read(random[:]); err != nil {
		t.Fatal(err)
	}
	n := &l2Net{t: t, prefix: fmt.Sprintf("lbt-%x", random)}
	n.bridge = n.addNetns("br")
	n.run("ip", "-n", n.bridge, "link", "add", "br0", "type", "bridge")
	n.run("ip", "-n", n.bridge, "link", "set", "br0", "up")
	return n
}

// addNetns creates a netns, deleted when the test ends.
func (n *l2Net) addNetns(suffix string) string {
	name := n.prefix + "-" + suffix
	n.run("ip", "netns", "add", name)
	n.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			n.t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// addHost creates a netns with eth0 at ip/24 on the bridge.
func (n *l2Net) addHost(suffix, ip string) host {
	h := host{netns: n.addNetns(suffix), ip: ip}
	port := "p-" + suffix
	n.run("ip", "-n", n.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
	n.run("ip", "-n", n.bridge, "link", "set", port, "master", "br0", "up")
	n.run("ip", "-n", h.netns, "addr", "add", ip+"/24", "dev", "eth0")
	n.run("ip", "-n", h.netns, "link", "set", "eth0", "up")
	n.run("ip", "-n", h.netns, "link", "set", "lo", "up")
	err := ns.WithNetNSPath(h.path(), func(ns.NetNS) error {
		iface, err := net.InterfaceByName("eth0")
		if err == nil {
			h.mac = iface.HardwareAddr
		}
		return err
	})
	if err != nil {
		n.t.Fatalf("reading the MAC of %s: %v", h.netns, err)
	}
	return h
}

func (n *l2Net) run(name string, args ...string) string {
	n.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// serveNodeName makes node answer TCP connections to lbIP:80 with its
// netns name, the way the service NAT would bring them to a backend: a
// DNAT rule to a listener on the node's own address.
func (n *l2Net) serveNodeName(node host, name string) {
	n.run("ip", "netns", "exec", node.netns, "iptables-nft", "-t", "nat", "-A", "PREROUTING",
		"-d", lbIP, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", node.ip, servedPort))
	var ln net.Listener
	err := ns.WithNetNSPath(node.path(), func(ns.NetNS) (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", node.ip, servedPort))
		return err
	})
	if err != nil {
		n.t.Fatalf("listening in %s: %v", node.netns, err)
	}
	n.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, name)
			conn.Close()
		}
	}()
}

// connect opens a TCP connection from client to lbIP:80 and returns what
// the server said.
func connect(client host) (string, error) {
	var conn net.Conn
	err := ns.WithNetNSPath(client.path(), func(ns.NetNS) (err error) {
		conn, err = net.DialTimeout("tcp", lbIP+":80", 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(conn)
	return string(b), err
}

// neighbour returns the MAC and state of client's neighbour entry for lbIP.
func (n *l2Net) neighbour(client host) (mac, state string) {
	var entries []struct {
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	out := n.run("ip", "-j", "-n", client.netns, "neigh", "show", "to", lbIP, "dev", "eth0")
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		n.t.Fatalf("parsing ip neigh output %q: %v", out, err)
	}
	if len(entries) == 0 {
		return "", "none"
	}
	return entries[0].LLAddr, strings.Join(entries[0].State, ",")
}

// arpFrame is one ARP packet seen by the client.
type arpFrame struct {
	at        time.Time
	outgoing  bool
	ethDst    net.HardwareAddr
	op        uint16
	senderMAC net.HardwareAddr
	senderIP  netip.Addr
	targetMAC net.HardwareAddr
	targetIP  netip.Addr
}

func (f arpFrame) String() string {
	return fmt.Sprintf("%s op=%d %s/%s -> %s/%s (eth dst %s, outgoing %t)", f.at.Format("15:04:05.000"),
		f.op, f.senderIP, f.senderMAC, f.targetIP, f.targetMAC, f.ethDst, f.outgoing)
}

// arpWatch records every ARP packet on the client's eth0, both ways.
type arpWatch struct {
	mu     sync.Mutex
	frames []arpFrame
}

func (n *l2Net) watchARP(client host) *arpWatch {
	var fd int
	err := ns.WithNetNSPath(client.path(), func(ns.NetNS) error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP))); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: iface.Index})
	})
	if err != nil {
		n.t.Fatalf("opening an ARP capture in %s: %v", client.netns, err)
	}
	// A receive timeout lets the reader see the close.
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		n.t.Fatal(err)
	}
	w := &arpWatch{}
	done, stopped := make(chan struct{}), make(chan struct{})
	n.t.Cleanup(func() {
		close(done)
		<-stopped
		unix.Close(fd)
	})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			default:
			}
			// The decoded layers point into buf: one buffer per frame.
			buf := make([]byte, 1500)
			size, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			var eth layers.Ethernet
			var arp layers.ARP
			if eth.DecodeFromBytes(buf[:size], gopacket.NilDecodeFeedback) != nil ||
				arp.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback) != nil {
				continue
			}
			sender, _ := netip.AddrFromSlice(arp.SourceProtAddress)
			target, _ := netip.AddrFromSlice(arp.DstProtAddress)
			ll, _ := from.(*unix.SockaddrLinklayer)
			w.mu.Lock()
			w.frames = append(w.frames, arpFrame{
				at: time.Now(), outgoing: ll != nil && ll.Pkttype == unix.PACKET_OUTGOING,
				ethDst: eth.DstMAC, op: arp.Operation,
				senderMAC: arp.SourceHwAddress, senderIP: sender, targetMAC: arp.DstHwAddress, targetIP: target,
			})
			w.mu.Unlock()
		}
	}()
	return w
}

// seen returns the frames recorded so far that match.
func (w *arpWatch) seen(match func(arpFrame) bool) []arpFrame {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []arpFrame
	for _, f := range w.frames {
		if match(f) {
			out = append(out, f)
		}
	}
	return out
}

func (w *arpWatch) String() string {
	var b strings.Builder
	for _, f := range w.seen(func(arpFrame) bool { return true }) {
		fmt.Fprintf(&b, "\n\t%s", f)
	}
	return b.String()
}

// startSpeaker runs the speaker of nodeName in node's netns until the
// returned stop is called or the test ends.
func startSpeaker(t *testing.T, client kubernetes.Interface, nodeName string, node host, log io.Writer, tune ...func(*SpeakerOptions)) (stop func()) {
	t.Helper()
	opts := SpeakerOptions{
		Pool:               netip.MustParsePrefix("192.168.10.200/29"),
		NetNSPath:          node.path(),
		GratuitousInterval: 200 * time.Millisecond,
		Logger:             slog.New(slog.NewTextHandler(io.MultiWriter(log, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range tune {
		f(&opts)
	}
	s, err := NewSpeaker(client, nodeName, "eth0", opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("speaker %s: Run: %v", nodeName, err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("speaker %s did not stop", nodeName)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestSpeakerAnswersARPAndFailsOver(t *testing.T) {
	n := newL2Net(t)
	hosts := map[string]host{
		"k8s-w1": n.addHost("n1", "192.168.10.101"),
		"k8s-w2": n.addHost("n2", "192.168.10.102"),
	}
	client := n.addHost("cl", clientIP)
	for name, h := range hosts {
		n.serveNodeName(h, name)
	}
	watch := n.watchARP(client)

	api := fake.NewClientset(node("k8s-w1", true), node("k8s-w2", true), lbService("web", withStatus(lbIP)))
	owner, _ := Announcer(netip.MustParseAddr(lbIP), []string{"k8s-w1", "k8s-w2"})
	other := map[string]string{"k8s-w1": "k8s-w2", "k8s-w2": "k8s-w1"}[owner]
	ownerMAC, otherMAC := hosts[owner].mac.String(), hosts[other].mac.String()
	t.Logf("announcer of %s: %s (%s); next: %s (%s)", lbIP, owner, ownerMAC, other, otherMAC)

	logs := map[string]*logBuffer{owner: {}, other: {}}
	stops := map[string]func(){}
	for name, h := range hosts {
		stops[name] = startSpeaker(t, api, name, h, logs[name])
	}
	waitForEvent(t, api, "web", v1.EventTypeNormal, ReasonNodeAssigned, fmt.Sprintf("announcing from node %q", owner))

	// The client reaches the address through the owner: ARP answered by
	// the speaker, packets caught by the NAT rule.
	var served string
	waitFor(t, 5*time.Second, "a connection to "+lbIP, func() (bool, string) {
		var err error
		served, err = connect(client)
		return err == nil, fmt.Sprint(err)
	})
	if served != owner {
		t.Fatalf("connection to %s served by %q, want %q", lbIP, served, owner)
	}
	if mac, state := n.neighbour(client); mac != ownerMAC {
		t.Fatalf("client's neighbour entry for %s: %s %s, want %s", lbIP, mac, state, ownerMAC)
	}
	answered := watch.seen(func(f arpFrame) bool {
		return f.op == layers.ARPReply && f.senderIP.String() == lbIP && f.targetIP.String() == clientIP
	})
	if len(answered) == 0 || answered[0].senderMAC.String() != ownerMAC {
		t.Fatalf("no ARP reply from %s to the client's request; ARP seen:%s", ownerMAC, watch)
	}
	if wrong := watch.seen(func(f arpFrame) bool { return f.senderIP.String() == lbIP && f.senderMAC.String() == otherMAC }); len(wrong) > 0 {
		t.Fatalf("%s answered for %s while %s owns it: %v", other, lbIP, owner, wrong)
	}

	// The owner's node goes NotReady: the other node takes over and tells
	// the client at once with gratuitous ARP.
	failover := time.Now()
	setReady(t, api, owner, false)
	waitFor(t, 5*time.Second, "the client's neighbour entry to move to "+otherMAC, func() (bool, string) {
		mac, state := n.neighbour(client)
		return mac == otherMAC, "entry is " + mac + " " + state
	})
	moved := time.Now()
	// The capture may lag behind the kernel's neighbour table.
	waitFor(t, 2*time.Second, "the client to see a gratuitous ARP from "+otherMAC, func() (bool, string) {
		garps := watch.seen(func(f arpFrame) bool {
			return !f.outgoing && f.op == layers.ARPReply && f.at.After(failover) && f.senderIP.String() == lbIP &&
				f.targetIP.String() == lbIP && f.senderMAC.String() == otherMAC && f.targetMAC.String() == otherMAC &&
				f.ethDst.String() == "ff:ff:ff:ff:ff:ff"
		})
		return len(garps) > 0, "ARP seen:" + watch.String()
	})
	asked := watch.seen(func(f arpFrame) bool {
		return f.outgoing && f.op == layers.ARPRequest && f.targetIP.String() == lbIP && f.at.After(failover) && f.at.Before(moved)
	})
	if len(asked) > 0 {
		t.Errorf("the client asked for %s again: the entry moved by resolution, not by gratuitous ARP: %v", lbIP, asked)
	}
	if served, err := connect(client); err != nil || served != other {
		t.Errorf("after failover, connection served by %q (%v), want %q", served, err, other)
	}
	waitForEvent(t, api, "web", v1.EventTypeNormal, ReasonNodeAssigned, fmt.Sprintf("announcing from node %q", other))
	waitFor(t, 5*time.Second, owner+" to log giving up", func() (bool, string) {
		return strings.Contains(logs[owner].String(), `msg="giving up address: no longer answering ARP for it"`),
			logs[owner].String()
	})
	if !strings.Contains(logs[owner].String(), `ip=`+lbIP+` service=default/web reason="node `+other+` is the announcer now"`) {
		t.Errorf("%s's give-up does not name %s:\n%s", owner, other, logs[owner])
	}
	if !strings.Contains(logs[other].String(), `msg="taking over address: answering ARP for it"`) {
		t.Errorf("%s did not log the takeover:\n%s", other, logs[other])
	}

	t.Logf("ARP seen by the client:%s", watch)

	stops[other]()
	if !strings.Contains(logs[other].String(), "reason=\"speaker stopping\"") {
		t.Errorf("%s did not log giving up when stopping:\n%s", other, logs[other])
	}
}

// setReady sets the Ready condition of a node.
func setReady(t *testing.T, client kubernetes.Interface, name string, ready bool) {
	t.Helper()
	ctx := context.Background()
	current, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	updated := current.DeepCopy()
	updated.Status = node(name, ready).Status
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting %s Ready=%t: %v", name, ready, err)
	}
}

func TestNewSpeakerRejectsMissingArguments(t *testing.T) {
	for _, tc := range []struct {
		client         kubernetes.Interface
		node, iface    string
		wantErrContain string
	}{
		{nil, "k8s-w1", "eth0", "no Kubernetes client"},
		{fake.NewClientset(), "", "eth0", "empty node name"},
		{fake.NewClientset(), "k8s-w1", "", "empty interface name"},
	} {
		_, err := NewSpeaker(tc.client, tc.node, tc.iface, SpeakerOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.wantErrContain) {
			t.Errorf("NewSpeaker(%v, %q, %q) error = %v, want %q", tc.client != nil, tc.node, tc.iface, err, tc.wantErrContain)
		}
	}
}

func TestSpeakerFailsOnMissingInterface(t *testing.T) {
	n := newL2Net(t)
	h := n.addHost("n1", "192.168.10.101")
	s, err := NewSpeaker(fake.NewClientset(), "k8s-w1", "nosuch0", SpeakerOptions{NetNSPath: h.path()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "finding interface nosuch0") {
		t.Errorf("Run on a missing interface: err = %v, want one naming nosuch0", err)
	}
}
