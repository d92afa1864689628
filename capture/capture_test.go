package capture

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/capture/internal/testpackets"
	"github.com/kubectl-nettrace/nettrace/capture/pcapng"
	"github.com/kubectl-nettrace/nettrace/trace"
)

var (
	addrA = netip.MustParseAddr("10.1.0.1")
	addrB = netip.MustParseAddr("10.1.0.2")
)

// sendUDP sends count datagrams from src to dst inside n.
func sendUDP(t *testing.T, n netns, src, dst netip.AddrPort, count int, payload []byte) {
	t.Helper()
	n.do(t, func() error {
		conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer conn.Close()
		for range count {
			if _, err := conn.Write(payload); err != nil {
				return fmt.Errorf("sending to %s: %w", dst, err)
			}
		}
		return nil
	})
}

// listenUDP opens a UDP socket inside n that swallows what it receives, so
// that the kernel sends no port unreachable.
func listenUDP(t *testing.T, n netns, addr netip.AddrPort) {
	t.Helper()
	n.do(t, func() error {
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		if err == nil {
			t.Cleanup(func() { conn.Close() })
		}
		return err
	})
}

func byKind(hops []trace.Hop, kind trace.HopKind) []trace.Hop {
	var out []trace.Hop
	for _, h := range hops {
		if h.Kind == kind {
			out = append(out, h)
		}
	}
	return out
}

func TestCaptureVethFilter(t *testing.T) {
	a, b := vethPair(t, "10.1.0.1/24", "10.1.0.2/24")
	flow := trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}
	cfgA := Config{Iface: "a0", Node: "k8s-w1", Netns: a.name, Match: flow}
	cfgB := Config{Iface: "b0", Node: "k8s-w2", Netns: b.name, Match: flow}
	listenUDP(t, b, netip.AddrPortFrom(addrB, 40001))
	listenUDP(t, b, netip.AddrPortFrom(addrB, 40003))

	from := time.Now()
	capA, recA := startCapture(t, a, cfgA)
	capB, recB := startCapture(t, b, cfgB)
	sendUDP(t, a, netip.AddrPortFrom(addrA, 40001), netip.AddrPortFrom(addrB, 40001), 5, []byte("traced"))
	sendUDP(t, a, netip.AddrPortFrom(addrA, 40002), netip.AddrPortFrom(addrB, 40003), 5, []byte("other"))
	a.exec(t, "ping", "-c", "2", "-i", "0.1", "-q", addrB.String())
	closeCapture(t, capA)
	closeCapture(t, capB)
	to := time.Now()

	for _, c := range []struct {
		cfg      Config
		rec      *recorder
		capture  *Capture
		outgoing bool
	}{{cfgA, recA, capA, true}, {cfgB, recB, capB, false}} {
		hops := c.rec.all()
		checkLabels(t, hops, c.cfg, from, to)
		packets := byKind(hops, trace.HopInterface)
		if len(packets) != 5 {
			t.Errorf("%s: %d packets, want the 5 of the flow: %+v", c.cfg.Iface, len(packets), hops)
		}
		wantWay := trace.WayIn
		if c.outgoing {
			wantWay = trace.WayOut
		}
		for _, h := range packets {
			p := h.Packet
			if p.Proto != trace.UDP || p.Src != addrA || p.SrcPort != 40001 || p.Dst != addrB || p.DstPort != 40001 || p.Outer != nil {
				t.Errorf("%s: packet %+v is not the flow's", c.cfg.Iface, p)
			}
			if h.Way != wantWay {
				t.Errorf("%s: flow packet seen %q, want %q", c.cfg.Iface, h.Way, wantWay)
			}
		}
		var request, reply bool
		for _, h := range byKind(hops, trace.HopARP) {
			request = request || h.ARP.Op == "request" && h.ARP.SenderIP == addrA && h.ARP.TargetIP == addrB
			reply = reply || h.ARP.Op == "reply" && h.ARP.SenderIP == addrB && !h.ARP.Proxy
		}
		if !request || !reply {
			t.Errorf("%s: ARP request %v, reply %v; want both: %+v", c.cfg.Iface, request, reply, hops)
		}
		stats := c.capture.Stats()
		if stats.Received != len(hops) || stats.Dropped != 0 || stats.Undecoded != 0 || stats.NotKept != 0 {
			t.Errorf("%s: stats %+v for %d hops", c.cfg.Iface, stats, len(hops))
		}
		for _, p := range c.capture.Packets(0) {
			if p.Comment == "" || !strings.Contains(p.Comment, "udp 10.1.0.1:40001") && !strings.HasPrefix(p.Comment, "arp") {
				t.Errorf("%s: kept packet with comment %q", c.cfg.Iface, p.Comment)
			}
			if outgoing := p.Direction == pcapng.Outbound; strings.HasPrefix(p.Comment, "udp") && outgoing != c.outgoing {
				t.Errorf("%s: flow packet direction %v", c.cfg.Iface, p.Direction)
			}
		}
	}
	checkPcapng(t, capA, capB)
}

// TestCaptureInbound captures both ends of a veth pair inbound only: each
// sees the packets its peer sent, none of its own, and the two together
// see every packet once.
func TestCaptureInbound(t *testing.T) {
	a, b := vethPair(t, "10.1.0.1/24", "10.1.0.2/24")
	flow := trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}
	cfgA := Config{Iface: "a0", Node: "k8s-w1", Netns: a.name, Match: flow, Inbound: true}
	cfgB := Config{Iface: "b0", Node: "k8s-w1", Netns: b.name, Match: flow, Inbound: true}
	listenUDP(t, a, netip.AddrPortFrom(addrA, 40001))
	listenUDP(t, b, netip.AddrPortFrom(addrB, 40001))

	capA, recA := startCapture(t, a, cfgA)
	capB, recB := startCapture(t, b, cfgB)
	sendUDP(t, a, netip.AddrPortFrom(addrA, 40002), netip.AddrPortFrom(addrB, 40001), 3, []byte("a to b"))
	sendUDP(t, b, netip.AddrPortFrom(addrB, 40002), netip.AddrPortFrom(addrA, 40001), 2, []byte("b to a"))
	recA.awaitPackets(2)
	recB.awaitPackets(3)
	closeCapture(t, capA)
	closeCapture(t, capB)

	for _, c := range []struct {
		cfg     Config
		rec     *recorder
		capture *Capture
		from    netip.Addr
		count   int
	}{{cfgA, recA, capA, addrB, 2}, {cfgB, recB, capB, addrA, 3}} {
		packets := byKind(c.rec.all(), trace.HopInterface)
		if len(packets) != c.count {
			t.Errorf("%s: %d packets, want the %d its peer sent: %+v", c.cfg.Iface, len(packets), c.count, packets)
		}
		for _, h := range packets {
			if h.Packet.Src != c.from || h.Way != trace.WayIn {
				t.Errorf("%s: captured %+v, way %q, which it sent itself", c.cfg.Iface, h.Packet, h.Way)
			}
		}
		for _, h := range byKind(c.rec.all(), trace.HopARP) {
			if h.ARP.SenderIP != c.from {
				t.Errorf("%s: captured ARP %+v, which it sent itself", c.cfg.Iface, h.ARP)
			}
		}
		for _, p := range c.capture.Packets(0) {
			if p.Direction != pcapng.Inbound {
				t.Errorf("%s: kept a packet with direction %v: %s", c.cfg.Iface, p.Direction, p.Comment)
			}
		}
	}
}

// TestCaptureCloseWaitsForHeldPackets closes a capture right after its
// packets arrived, while the kernel still holds them in a block that its
// retire timer, lengthened here as a loaded machine delays it, has not
// handed over: Close waits for the block instead of losing them.
func TestCaptureCloseWaitsForHeldPackets(t *testing.T) {
	a, b := vethPair(t, "10.1.0.1/24", "10.1.0.2/24")
	flow := trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}
	listenUDP(t, b, netip.AddrPortFrom(addrB, 40001))
	cfg := Config{Iface: "b0", Node: "k8s-w1", Netns: b.name, Match: flow, Inbound: true, retire: 6 * stopGrace}
	capture, rec := startCapture(t, b, cfg)
	sendUDP(t, a, netip.AddrPortFrom(addrA, 40002), netip.AddrPortFrom(addrB, 40001), 3, []byte("a to b"))
	closeCapture(t, capture)
	if got := byKind(rec.all(), trace.HopInterface); len(got) != 3 {
		t.Errorf("%d packets after Close, want the 3 sent: %+v", len(got), got)
	}
}

// TestCaptureWiden widens a capture while it runs, as the engine does when
// a NAT gives the flow a port its match did not name: the packets on the
// new port and to the new end are captured from then on, not before, and
// the flow's own port still is.
func TestCaptureWiden(t *testing.T) {
	a, b := vethPair(t, "10.1.0.1/24", "10.1.0.2/24")
	cfg := Config{Iface: "b0", Node: "k8s-w2", Netns: b.name, Match: trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}}
	for _, port := range []uint16{40001, 40002, 8080} {
		listenUDP(t, b, netip.AddrPortFrom(addrB, port))
	}
	c, rec := startCapture(t, b, cfg)
	send := func(srcPort, dstPort uint16, payload string) {
		sendUDP(t, a, netip.AddrPortFrom(addrA, srcPort), netip.AddrPortFrom(addrB, dstPort), 1, []byte(payload))
	}
	send(40001, 40001, "flow")
	send(33333, 40002, "new port, before")
	send(33334, 8080, "new end, before")
	widened := trace.Match{Proto: trace.UDP, Ports: []uint16{40001, 40002}, Ends: []netip.AddrPort{netip.AddrPortFrom(addrB, 8080)}}
	if err := c.Widen(widened); err != nil {
		t.Fatalf("Widen: %v", err)
	}
	send(33335, 40002, "new port, after")
	send(33336, 8080, "new end, after")
	send(33337, 8081, "other port")
	send(40001, 40001, "flow again")
	closeCapture(t, c)

	var got []uint16
	for _, h := range byKind(rec.all(), trace.HopInterface) {
		got = append(got, h.Packet.SrcPort)
	}
	if want := []uint16{40001, 33335, 33336, 40001}; !slices.Equal(got, want) {
		t.Errorf("captured packets from ports %v, want %v", got, want)
	}
	if err := c.Widen(widened); err == nil {
		t.Error("Widen after Close: no error")
	}
}

// checkPcapng writes a file per capture, merges them, and reads both kinds
// with the real tshark.
func checkPcapng(t *testing.T, capA, capB *Capture) {
	dir := t.TempDir()
	var files []string
	for _, c := range []*Capture{capA, capB} {
		var buf bytes.Buffer
		if err := WriteFile(&buf, c); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
		files = append(files, filepath.Join(dir, c.cfg.Node+".pcapng"))
		if err := os.WriteFile(files[len(files)-1], buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var inputs []*os.File
	for _, f := range files {
		in, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		inputs = append(inputs, in)
	}
	var merged bytes.Buffer
	if err := pcapng.Merge(&merged, inputs[0], inputs[1]); err != nil {
		t.Fatalf("Merge: %v", err)
	}
	mergedFile := filepath.Join(dir, "merged.pcapng")
	if err := os.WriteFile(mergedFile, merged.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	lines := tshark(t, files[0], "frame.interface_name", "frame.comment", "udp.srcport")
	want := len(capA.Packets(0))
	if len(lines) != want {
		t.Fatalf("tshark read %d packets of k8s-w1, want %d:\n%s", len(lines), want, strings.Join(lines, "\n"))
	}
	flow := 0
	for _, l := range lines {
		f := strings.Split(l, "\t")
		if f[0] != "k8s-w1/a0" || f[1] == "" {
			t.Errorf("tshark: %q, want interface k8s-w1/a0 and a comment", l)
		}
		if f[2] == "40001" {
			flow++
		}
	}
	if flow != 5 {
		t.Errorf("tshark decoded %d packets of the flow, want 5", flow)
	}

	lines = tshark(t, mergedFile, "frame.interface_name", "frame.comment", "frame.time_epoch")
	if len(lines) != want+len(capB.Packets(0)) {
		t.Fatalf("merged: tshark read %d packets, want %d", len(lines), want+len(capB.Packets(0)))
	}
	names := map[string]int{}
	last := ""
	for _, l := range lines {
		f := strings.Split(l, "\t")
		names[f[0]]++
		if f[2] < last { // same width: seconds since 1970 with 9 decimals
			t.Errorf("merged file not ordered by time: %s after %s", f[2], last)
		}
		last = f[2]
	}
	if names["k8s-w1/a0"] != want || names["k8s-w2/b0"] != len(capB.Packets(0)) {
		t.Errorf("merged interfaces %v", names)
	}
}

// tshark runs the real tshark on file and returns a line of fields per packet.
func tshark(t *testing.T, file string, fields ...string) []string {
	t.Helper()
	args := []string{"-r", file, "-T", "fields"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	out, err := exec.Command("tshark", args...).Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", strings.Join(args, " "), err)
	}
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
}

// openTUN creates a TUN device without packet information inside n and
// returns its file; writing an IP packet to it makes the kernel receive it.
func openTUN(t *testing.T, n netns, name string) *os.File {
	t.Helper()
	var tun *os.File
	n.do(t, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("creating %s: %w", name, err)
		}
		tun = os.NewFile(uintptr(fd), name)
		return nil
	})
	t.Cleanup(func() { tun.Close() })
	return tun
}

func TestCaptureTUN(t *testing.T) {
	n := newNetns(t)
	tun := openTUN(t, n, "tunl0")
	n.ip(t, "addr", "add", "10.2.0.1/24", "dev", "tunl0")
	n.ip(t, "link", "set", "tunl0", "up")

	local, peer, remoteNode := netip.MustParseAddr("10.2.0.1"), netip.MustParseAddr("10.2.0.2"), netip.MustParseAddr("10.2.0.3")
	pod, other := netip.MustParseAddr("172.16.1.5"), netip.MustParseAddr("172.16.2.9")
	cfg := Config{Iface: "tunl0", Node: "k8s-w1", Match: trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}}
	if c := mustOpenClose(t, n, cfg); c.link.String() != "Raw" {
		t.Errorf("link type of a TUN device: %s, want Raw", c.link)
	}

	from := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var c *Capture
	n.do(t, func() (err error) { c, err = Open(cfg); return err })
	t.Cleanup(func() { c.Close() })
	rec := &recorder{}
	if err := c.Arm(ctx, rec.emit); err != nil {
		t.Fatal(err)
	}
	for _, packet := range [][]byte{
		testpackets.UDP(netip.AddrPortFrom(peer, 5555), netip.AddrPortFrom(local, 40001), []byte("traced")),
		testpackets.UDP(netip.AddrPortFrom(peer, 5555), netip.AddrPortFrom(local, 40002), []byte("other")),
		testpackets.IPIP(remoteNode, local, testpackets.UDP(netip.AddrPortFrom(pod, 40001), netip.AddrPortFrom(other, 8080), nil)),
		testpackets.IPIP(remoteNode, local, testpackets.UDP(netip.AddrPortFrom(pod, 40002), netip.AddrPortFrom(other, 8080), nil)),
	} {
		if _, err := tun.Write(packet); err != nil {
			t.Fatalf("writing to the TUN device: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Cancelling the context stops the capture as Close does: the reader
	// drains the ring and returns.
	time.Sleep(50 * time.Millisecond)
	cancel()
	stats := c.Stats()
	closeCapture(t, c)
	to := time.Now()

	hops := rec.all()
	checkLabels(t, hops, cfg, from, to)
	if len(hops) != 3 || stats.Received != 3 {
		t.Fatalf("%d hops (stats %+v), want 3: the datagram, its port unreachable, the IPIP datagram: %+v", len(hops), stats, hops)
	}
	var plain, unreachable, tunnelled bool
	for _, h := range hops {
		p := h.Packet
		switch {
		case p.Proto == trace.UDP && p.Outer == nil:
			plain = p.Src == peer && p.DstPort == 40001
		case p.Proto == trace.ICMP:
			unreachable = p.ICMPType == 3 && p.ICMPCode == 3 && h.Note == "port unreachable for udp 10.2.0.2:5555 > 10.2.0.1:40001"
		case p.Outer != nil:
			tunnelled = *p.Outer == trace.Tunnel{Type: "ipip", Src: remoteNode, Dst: local} &&
				p.Src == pod && p.SrcPort == 40001 && p.Dst == other
		}
	}
	if !plain || !unreachable || !tunnelled {
		t.Errorf("plain %v, unreachable %v, tunnelled %v; hops: %+v", plain, unreachable, tunnelled, hops)
	}

	var buf bytes.Buffer
	if err := WriteFile(&buf, c); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "tun.pcapng")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	lines := tshark(t, file, "frame.interface_name", "frame.protocols", "frame.comment")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "k8s-w1/tunl0\traw:ip:udp") ||
		!strings.Contains(lines[2], "ipip 10.2.0.3 > 10.2.0.1: udp 172.16.1.5:40001 > 172.16.2.9:8080") {
		t.Errorf("tshark on the TUN capture:\n%s", strings.Join(lines, "\n"))
	}
}

// mustOpenClose opens and closes a capture, unarmed.
func mustOpenClose(t *testing.T, n netns, cfg Config) *Capture {
	t.Helper()
	var c *Capture
	n.do(t, func() (err error) { c, err = Open(cfg); return err })
	closeCapture(t, c)
	if err := c.Arm(context.Background(), func(trace.Hop) {}); err == nil {
		t.Error("Arm after Close: no error")
	}
	return c
}

func TestCaptureVXLAN(t *testing.T) {
	a, b := vethPair(t, "192.168.50.1/24", "192.168.50.2/24")
	for _, v := range []struct {
		n             netns
		local, remote string
		overlay       string
	}{{a, "192.168.50.1", "192.168.50.2", "10.42.0.1/24"}, {b, "192.168.50.2", "192.168.50.1", "10.42.0.2/24"}} {
		dev := map[netns]string{a: "a0", b: "b0"}[v.n]
		v.n.ip(t, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", v.local, "remote", v.remote,
			"dstport", "4789", "dev", dev)
		v.n.ip(t, "addr", "add", v.overlay, "dev", "vx0")
		v.n.ip(t, "link", "set", "vx0", "up")
	}
	overlayB := netip.MustParseAddr("10.42.0.2")
	cfg := Config{Iface: "a0", Node: "k8s-w1", Netns: a.name, Match: trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{overlayB}}}
	c, rec := startCapture(t, a, cfg)
	a.exec(t, "ping", "-c", "2", "-i", "0.1", "-q", "10.42.0.2")
	a.exec(t, "ping", "-c", "2", "-i", "0.1", "-q", "192.168.50.2")
	closeCapture(t, c)

	packets := byKind(rec.all(), trace.HopInterface)
	if len(packets) != 4 {
		t.Fatalf("%d packets, want 2 echo requests and 2 replies over VXLAN: %+v", len(packets), packets)
	}
	requests := 0
	for _, h := range packets {
		p := h.Packet
		out := &trace.Tunnel{Type: "vxlan", Src: netip.MustParseAddr("192.168.50.1"), Dst: netip.MustParseAddr("192.168.50.2"), VNI: 42}
		if p.ICMPType == 0 {
			out.Src, out.Dst = out.Dst, out.Src
		} else {
			requests++
		}
		if p.Outer == nil || *p.Outer != *out || p.Proto != trace.ICMP || (p.Src != overlayB && p.Dst != overlayB) {
			t.Errorf("packet %+v outer %+v, want ICMP of 10.42.0.2 inside %+v", p, p.Outer, out)
		}
	}
	if requests != 2 {
		t.Errorf("%d echo requests, want 2", requests)
	}
}

func TestCaptureProxyARPAndDNS(t *testing.T) {
	// A pod (a) whose gateway is 169.254.1.1, answered by proxy ARP on the
	// host's veth (b0, MAC ee:ee:ee:ee:ee:ee), as Calico sets it up; the
	// host runs a DNS server on 10.96.0.10.
	pod, dnsAddr := netip.MustParseAddr("172.16.1.5"), netip.MustParseAddr("10.96.0.10")
	a, b := newNetns(t), newNetns(t)
	a.ip(t, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b.name)
	b.ip(t, "link", "set", "b0", "address", "ee:ee:ee:ee:ee:ee")
	b.ip(t, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
	b.ip(t, "addr", "add", dnsAddr.String()+"/32", "dev", "x1")
	for _, dev := range []string{"b0", "x0", "x1"} {
		b.ip(t, "link", "set", dev, "up")
	}
	b.ip(t, "route", "add", "169.254.1.1", "dev", "x0")
	b.ip(t, "route", "add", pod.String(), "dev", "b0")
	b.exec(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.b0.proxy_arp=1", "net.ipv4.neigh.b0.proxy_delay=0")
	a.ip(t, "addr", "add", pod.String()+"/32", "dev", "a0")
	a.ip(t, "link", "set", "a0", "up")
	a.ip(t, "route", "add", "169.254.1.1", "dev", "a0", "scope", "link")
	a.ip(t, "route", "add", "default", "via", "169.254.1.1", "dev", "a0")

	name := "kubernetes.default.svc.cluster.local."
	serveDNS(t, b, netip.AddrPortFrom(dnsAddr, 53), name, netip.MustParseAddr("10.96.0.1"))

	match := trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}
	headers, recHeaders := startCapture(t, a, Config{Iface: "a0", Node: "n", Match: match, DNS: true})
	full, _ := startCapture(t, a, Config{Iface: "a0", Node: "n", Match: match, FullPayload: true})
	big := make([]byte, 1000)
	sendUDP(t, a, netip.AddrPortFrom(pod, 40001), netip.AddrPortFrom(dnsAddr, 9), 1, big)
	var answer []byte
	a.do(t, func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dnsAddr, 53)))
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write(testpackets.DNSMessage(0x1a2b, name, false, nil)); err != nil {
			return err
		}
		answer = make([]byte, 512)
		n, err := conn.Read(answer)
		answer = answer[:n]
		return err
	})
	closeCapture(t, headers)
	closeCapture(t, full)

	hops := recHeaders.all()
	var proxyReply bool
	for _, h := range byKind(hops, trace.HopARP) {
		if h.ARP.Op == "reply" && h.ARP.SenderIP == netip.MustParseAddr("169.254.1.1") {
			proxyReply = h.ARP.Proxy && h.ARP.SenderMAC == "ee:ee:ee:ee:ee:ee" && h.Note == "proxy ARP"
		}
	}
	if !proxyReply {
		t.Errorf("no proxy ARP reply for 169.254.1.1 among %+v", byKind(hops, trace.HopARP))
	}
	dns := byKind(hops, trace.HopDNS)
	if len(dns) != 2 || dns[0].DNS.Response || dns[0].DNS.Question != name || !dns[1].DNS.Response ||
		dns[1].DNS.Rcode != "NOERROR" || len(dns[1].DNS.Answers) != 1 || dns[1].DNS.Answers[0] != "A 10.96.0.1" {
		t.Errorf("DNS hops %+v, want the query and its answer", dns)
	}

	// Headers only by default, but DNS whole; FullPayload keeps it all.
	for _, p := range headers.Packets(0) {
		switch {
		case strings.Contains(p.Comment, "dns "):
			if len(p.Data) != p.Length {
				t.Errorf("DNS packet cut to %d of %d bytes", len(p.Data), p.Length)
			}
		case strings.HasPrefix(p.Comment, "udp "):
			if len(p.Data) != DefaultSnaplen || p.Length != 14+20+8+len(big) {
				t.Errorf("flow packet kept %d of %d bytes, want %d of %d", len(p.Data), p.Length, DefaultSnaplen, 14+20+8+len(big))
			}
		}
	}
	var fullFlow int
	for _, p := range full.Packets(0) {
		if strings.HasPrefix(p.Comment, "udp ") {
			fullFlow++
			if len(p.Data) != p.Length || p.Length != 14+20+8+len(big) {
				t.Errorf("FullPayload kept %d of %d bytes", len(p.Data), p.Length)
			}
		}
	}
	if fullFlow != 1 {
		t.Errorf("FullPayload capture kept %d flow packets, want 1", fullFlow)
	}
}

// serveDNS answers every query to addr inside n with name's A record.
func serveDNS(t *testing.T, n netns, addr netip.AddrPort, name string, answer netip.Addr) {
	t.Helper()
	var conn *net.UDPConn
	n.do(t, func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= 2 {
				id := uint16(buf[0])<<8 | uint16(buf[1])
				conn.WriteToUDPAddrPort(testpackets.DNSMessage(id, name, true, []netip.Addr{answer}), from)
			}
		}
	}()
}

func TestCaptureReportsDrops(t *testing.T) {
	a, b := vethPair(t, "10.1.0.1/24", "10.1.0.2/24")
	listenUDP(t, b, netip.AddrPortFrom(addrB, 40001))
	var c *Capture
	// The smallest ring, not read while the flood fills it.
	a.do(t, func() (err error) {
		c, err = Open(Config{Iface: "a0", Node: "k8s-w1", Match: trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}, RingSize: 1})
		return err
	})
	t.Cleanup(func() { c.Close() })
	const sent = 5000
	sendUDP(t, a, netip.AddrPortFrom(addrA, 40001), netip.AddrPortFrom(addrB, 40001), sent, []byte("flood"))
	rec := &recorder{}
	if err := c.Arm(context.Background(), rec.emit); err != nil {
		t.Fatal(err)
	}
	loss, err := c.Close()
	if err != nil {
		t.Fatal(err)
	}
	stats := c.Stats()
	if len(loss) != 1 || loss[0].Count != stats.Dropped || loss[0].Node != "k8s-w1" || loss[0].Source != "capture" {
		t.Fatalf("loss %+v, stats %+v: want one capture loss", loss, stats)
	}
	flow := len(byKind(rec.all(), trace.HopInterface))
	// Every flow packet was either received or counted as dropped.
	if stats.Dropped == 0 || flow >= sent || flow+stats.Dropped < sent {
		t.Errorf("%d flow packets received and %d dropped of %d sent", flow, stats.Dropped, sent)
	}
}

func TestOpenErrors(t *testing.T) {
	n := newNetns(t)
	n.do(t, func() error {
		if _, err := Open(Config{Iface: "nosuch0", Match: trace.Match{Proto: trace.TCP}}); err == nil {
			t.Error("missing interface: no error")
		}
		if _, err := Open(Config{Iface: "lo", Match: trace.Match{Proto: "gre"}}); err == nil {
			t.Error("bad match: no error")
		}
		if _, err := Open(Config{Iface: "lo", Match: trace.Match{Proto: trace.TCP}, Snaplen: -1}); err == nil {
			t.Error("negative snaplen: no error")
		}
		return nil
	})
}
