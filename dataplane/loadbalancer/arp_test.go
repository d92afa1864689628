package loadbalancer

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// resolve makes client's kernel resolve lbIP, by sending it a datagram.
func resolve(t *testing.T, client host) {
	t.Helper()
	err := ns.WithNetNSPath(client.path(), func(ns.NetNS) error {
		conn, err := net.Dial("udp", lbIP+":9")
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("who has it?"))
		return err
	})
	if err != nil {
		t.Fatalf("sending to %s from %s: %v", lbIP, client.netns, err)
	}
}

func TestResponderSurvivesLinkFlap(t *testing.T) {
	n := newL2Net(t)
	node := n.addHost("n1", "192.168.10.101")
	client := n.addHost("cl", clientIP)

	var r *arpResponder
	err := ns.WithNetNSPath(node.path(), func(ns.NetNS) (err error) {
		r, err = listenARP("eth0", testLogger(t))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- r.serve() }()
	t.Cleanup(func() {
		r.close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	r.announce(netip.MustParseAddr(lbIP))

	n.run("ip", "-n", node.netns, "link", "set", "eth0", "down")
	n.run("ip", "-n", node.netns, "link", "set", "eth0", "up")
	waitFor(t, 5*time.Second, "the client to resolve "+lbIP+" to "+node.mac.String(), func() (bool, string) {
		select {
		case err := <-served:
			t.Fatalf("serve returned after a link flap: %v", err)
		default:
		}
		resolve(t, client)
		mac, state := n.neighbour(client)
		return mac == node.mac.String(), "entry is " + mac + " " + state
	})
}
