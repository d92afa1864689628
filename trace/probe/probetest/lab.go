// Package probetest builds, for tests, a small routed network out of
// throwaway network namespaces: a client, a router that DNATs a service
// address and masquerades towards the server, and a server that answers TCP,
// UDP, DNS and ICMP. Everything is removed when the test ends.
package probetest

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
)

// The lab's addresses. The client reaches the router on 10.1.0.0/24, the
// router reaches the server on 10.2.0.0/24, and the server has no route back
// to the client: replies get home only through the router's MASQUERADE.
var (
	ClientIP       = netip.MustParseAddr("10.1.0.2")
	RouterClientIP = netip.MustParseAddr("10.1.0.1")
	RouterServerIP = netip.MustParseAddr("10.2.0.1")
	ServerIP       = netip.MustParseAddr("10.2.0.2")
	// ServiceIP is DNATed by the router to ServerIP: TCP 80 to TCPPort,
	// TCP 81 to ClosedTCPPort, UDP 7 to EchoPort, UDP 53 to DNSPort and
	// ICMP as it is.
	ServiceIP = netip.MustParseAddr("10.96.0.10")
	// SilentIP is dropped by the router's FORWARD chain; RejectedIP is
	// rejected there with ICMP admin prohibited.
	SilentIP   = netip.MustParseAddr("10.2.0.99")
	RejectedIP = netip.MustParseAddr("10.2.0.98")
)

// The server's ports.
const (
	TCPPort       = 8080
	ClosedTCPPort = 8081
	EchoPort      = 7007
	ClosedUDPPort = 7008
	DNSPort       = 5353
)

// DNSName is the name the lab's DNS server answers, with ServerIP.
const DNSName = "server.lab.test."

// Lab is the three network namespaces of the lab.
type Lab struct {
	Client, Router, Server ns.NetNS
}

// routerRules is the router's ruleset, for iptables-legacy-restore.
var routerRules = fmt.Sprintf(`*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d %[1]s/32 -p tcp --dport 80 -j DNAT --to-destination %[2]s:%[3]d
-A PREROUTING -d %[1]s/32 -p tcp --dport 81 -j DNAT --to-destination %[2]s:%[4]d
-A PREROUTING -d %[1]s/32 -p udp --dport 7 -j DNAT --to-destination %[2]s:%[5]d
-A PREROUTING -d %[1]s/32 -p udp --dport 53 -j DNAT --to-destination %[2]s:%[6]d
-A PREROUTING -d %[1]s/32 -p icmp -j DNAT --to-destination %[2]s
-A POSTROUTING -o r1 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d %[7]s/32 -j DROP
-A FORWARD -d %[8]s/32 -j REJECT --reject-with icmp-admin-prohibited
COMMIT
`, ServiceIP, ServerIP, TCPPort, ClosedTCPPort, EchoPort, DNSPort, SilentIP, RejectedIP)

// New builds the lab and starts the server's listeners; t.Cleanup removes
// all of it, even when the test fails.
func New(t testing.TB) *Lab {
	t.Helper()
	lab := &Lab{}
	for _, n := range []*ns.NetNS{&lab.Client, &lab.Router, &lab.Server} {
		netns, err := testutils.NewNS()
		if err != nil {
			t.Fatalf("creating netns: %v", err)
		}
		t.Cleanup(func() {
			netns.Close()
			if err := testutils.UnmountNS(netns); err != nil {
				t.Errorf("removing netns %s: %v", netns.Path(), err)
			}
		})
		*n = netns
	}
	lab.link(t, lab.Client, "c0", lab.Router, "r0")
	lab.link(t, lab.Router, "r1", lab.Server, "s0")
	Run(t, lab.Client, "ip", "addr", "add", ClientIP.String()+"/24", "dev", "c0")
	Run(t, lab.Client, "ip", "route", "add", "default", "via", RouterClientIP.String())
	Run(t, lab.Router, "ip", "addr", "add", RouterClientIP.String()+"/24", "dev", "r0")
	Run(t, lab.Router, "ip", "addr", "add", RouterServerIP.String()+"/24", "dev", "r1")
	Run(t, lab.Router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	RunInput(t, lab.Router, routerRules, "iptables-legacy-restore")
	Run(t, lab.Server, "ip", "addr", "add", ServerIP.String()+"/24", "dev", "s0")
	lab.serve(t)
	return lab
}

// link connects two namespaces with a veth pair and brings both ends up.
func (lab *Lab) link(t testing.TB, a ns.NetNS, aName string, b ns.NetNS, bName string) {
	t.Helper()
	err := a.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName},
			PeerName: bName, PeerNamespace: netlink.NsFd(int(b.Fd()))})
	})
	if err != nil {
		t.Fatalf("adding veth %s-%s: %v", aName, bName, err)
	}
	for _, end := range []struct {
		netns ns.NetNS
		name  string
	}{{a, aName}, {b, bName}, {a, "lo"}, {b, "lo"}} {
		Run(t, end.netns, "ip", "link", "set", end.name, "up")
	}
}

// Run runs a command inside netns and fails the test if it fails.
func Run(t testing.TB, netns ns.NetNS, name string, args ...string) string {
	t.Helper()
	return RunInput(t, netns, "", name, args...)
}

// RunInput is Run with input on the command's standard input.
func RunInput(t testing.TB, netns ns.NetNS, input, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + netns.Path(), name}, args...)...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v: %s", name, strings.Join(args, " "), netns.Path(), err, out)
	}
	return string(out)
}

// serve starts the server's TCP listener, UDP echo and DNS server.
func (lab *Lab) serve(t testing.TB) {
	t.Helper()
	var (
		tcp  net.Listener
		echo net.PacketConn
		udp  net.PacketConn
	)
	err := lab.Server.Do(func(ns.NetNS) error {
		var err error
		if tcp, err = net.Listen("tcp4", netip.AddrPortFrom(ServerIP, TCPPort).String()); err != nil {
			return err
		}
		if echo, err = net.ListenPacket("udp4", netip.AddrPortFrom(ServerIP, EchoPort).String()); err != nil {
			return err
		}
		udp, err = net.ListenPacket("udp4", netip.AddrPortFrom(ServerIP, DNSPort).String())
		return err
	})
	if err != nil {
		t.Fatalf("starting the lab's servers: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	server := &dns.Server{PacketConn: udp, Handler: dns.HandlerFunc(answer)}
	started := make(chan struct{})
	server.NotifyStartedFunc = func() { close(started) }
	go func() {
		defer wg.Done()
		server.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		tcp.Close()
		echo.Close()
		server.Shutdown()
		wg.Wait()
	})
}

// answer answers DNSName with ServerIP and any other name with NXDOMAIN.
func answer(w dns.ResponseWriter, query *dns.Msg) {
	resp := new(dns.Msg).SetReply(query)
	if q := query.Question[0]; q.Name == DNSName && q.Qtype == dns.TypeA {
		resp.Answer = append(resp.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: DNSName, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A:   ServerIP.AsSlice()})
	} else {
		resp.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(resp)
}
