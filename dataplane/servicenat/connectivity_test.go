package servicenat

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// link connects node to peer with a veth pair: nodeSide on the node end,
// "eth0" with peerAddr in peer, whose default route goes through the node.
func link(t *testing.T, node ns.NetNS, nodeSide, nodeAddr string, peer ns.NetNS, peerAddr string) {
	t.Helper()
	peerName := filepath.Base(peer.Path())
	inNS(t, node, "ip", "link", "add", nodeSide, "type", "veth", "peer", "name", "eth0", "netns", peerName)
	inNS(t, node, "ip", "addr", "add", nodeAddr, "dev", nodeSide)
	inNS(t, node, "ip", "link", "set", nodeSide, "up")
	inNS(t, peer, "ip", "link", "set", "lo", "up")
	inNS(t, peer, "ip", "addr", "add", peerAddr, "dev", "eth0")
	inNS(t, peer, "ip", "link", "set", "eth0", "up")
	gateway, _, _ := strings.Cut(nodeAddr, "/")
	inNS(t, peer, "ip", "route", "add", "default", "via", gateway)
}

// serveRemoteAddr runs a TCP server at addr inside netns that answers each
// connection with the client address it sees, one line, until the test ends.
func serveRemoteAddr(t *testing.T, netns ns.NetNS, addr string) {
	t.Helper()
	var l net.Listener
	err := netns.Do(func(ns.NetNS) (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			conn.Write([]byte(host + "\n"))
			conn.Close()
		}
	}()
}

// askRemoteAddr connects from netns to addr and returns the client address
// the server saw.
func askRemoteAddr(netns ns.NetNS, addr string) (string, error) {
	var seen string
	err := netns.Do(func(ns.NetNS) error {
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		seen, err = bufio.NewReader(conn).ReadString('\n')
		return err
	})
	return strings.TrimSpace(seen), err
}

// TestConnectivityInNetNS sends real connections through the rules of a
// node namespace: a pod to a ClusterIP keeps its source, while NodePort
// traffic, off-cluster traffic to a ClusterIP and hairpin traffic are
// masqueraded to the node.
func TestConnectivityInNetNS(t *testing.T) {
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			node, client, server, outside := newNetNS(t), newNetNS(t), newNetNS(t), newNetNS(t)
			link(t, node, "to-client", "172.16.1.1/24", client, "172.16.1.2/24")
			link(t, node, "to-server", "172.16.2.1/24", server, "172.16.2.2/24")
			link(t, node, "to-outside", "192.168.50.1/24", outside, "192.168.50.2/24")
			// As on a real node, what is not local goes out to the world.
			inNS(t, node, "ip", "route", "add", "default", "via", "192.168.50.2")
			if err := node.Do(func(ns.NetNS) error {
				return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
			}); err != nil {
				t.Fatal(err)
			}
			serveRemoteAddr(t, server, "172.16.2.2:8080")

			snap := Snapshot{
				Services: []*v1.Service{makeService("default", "web", "10.96.0.100", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeNodePort
					s.Spec.Ports[0].NodePort = 30080
				})},
				EndpointSlices: []*discovery.EndpointSlice{makeSlice("default", "web", "web-1",
					[]discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}, ready("172.16.2.2", testNode))},
			}
			p := newSyncer(t, node, backend)
			if err := p.sync(context.Background(), snap); err != nil {
				t.Fatalf("sync: %v", err)
			}

			for _, tc := range []struct {
				name     string
				from     ns.NetNS
				to, seen string
			}{
				{"pod to ClusterIP keeps its source", client, "10.96.0.100:80", "172.16.1.2"},
				{"outside to NodePort is masqueraded", outside, "192.168.50.1:30080", "172.16.2.1"},
				{"pod to NodePort is masqueraded", client, "172.16.1.1:30080", "172.16.2.1"},
				{"endpoint to its own ClusterIP is masqueraded (hairpin)", server, "10.96.0.100:80", "172.16.2.1"},
			} {
				seen, err := askRemoteAddr(tc.from, tc.to)
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					continue
				}
				if seen != tc.seen {
					t.Errorf("%s: server saw %s, want %s", tc.name, seen, tc.seen)
				}
			}

			// Off-cluster traffic to a ClusterIP, routed through the
			// node, is masqueraded too.
			inNS(t, outside, "ip", "route", "add", "10.96.0.0/12", "via", "192.168.50.1")
			if seen, err := askRemoteAddr(outside, "10.96.0.100:80"); err != nil || seen != "172.16.2.1" {
				t.Errorf("outside to ClusterIP: server saw %q (%v), want 172.16.2.1", seen, err)
			}

			// Without endpoints the ClusterIP rejects at once.
			if err := p.sync(context.Background(), Snapshot{Services: snap.Services}); err != nil {
				t.Fatalf("sync without endpoints: %v", err)
			}
			if _, err := askRemoteAddr(client, "10.96.0.100:80"); err == nil || !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("service without endpoints: got %v, want connection refused", err)
			}
		})
	}
	checkHostUntouched(t)
}
