package route_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/probe/probetest"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// newNS returns a throwaway netns with lo up, removed when the test ends.
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Close()
		if err := testutils.UnmountNS(netns); err != nil {
			t.Errorf("removing netns %s: %v", netns.Path(), err)
		}
	})
	probetest.Run(t, netns, "ip", "link", "set", "lo", "up")
	return netns
}

// node is a netns set up like a lab node: eth0 on the underlay, a pod
// route, a tunnel route, the block's blackhole, and policy routing.
func node(t *testing.T) ns.NetNS {
	n := newNS(t)
	for _, cmd := range [][]string{
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		// No dummy driver here: veth pairs with both ends up stand in.
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-end"},
		{"ip", "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0-end"},
		{"ip", "link", "add", "cali7715d358f22", "type", "veth", "peer", "name", "cali-end"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "link", "set", "eth0-end", "up"},
		{"ip", "link", "set", "tunl0", "up"},
		{"ip", "link", "set", "tunl0-end", "up"},
		{"ip", "link", "set", "cali7715d358f22", "up"},
		{"ip", "link", "set", "cali-end", "up"},
		{"ip", "addr", "add", "192.168.10.101/24", "dev", "eth0"},
		{"ip", "addr", "add", "10.0.0.1/32", "dev", "eth0"},
		{"ip", "route", "add", "172.16.158.15", "dev", "cali7715d358f22", "scope", "link"},
		{"ip", "route", "add", "blackhole", "172.16.158.0/24", "proto", "bird"},
		{"ip", "route", "add", "172.16.184.0/24", "via", "192.168.10.102", "dev", "tunl0", "onlink"},
		{"ip", "route", "add", "unreachable", "10.50.0.0/16"},
		{"ip", "route", "add", "prohibit", "10.60.0.0/16", "table", "100"},
		{"ip", "rule", "add", "to", "10.60.0.0/16", "table", "100", "pref", "100"},
		{"ip", "route", "add", "10.70.0.0/16", "dev", "eth0", "table", "200"},
		{"ip", "rule", "add", "fwmark", "0x10", "table", "200", "pref", "200"},
	} {
		probetest.Run(t, n, cmd[0], cmd[1:]...)
	}
	return n
}

func TestLookup(t *testing.T) {
	n := node(t)
	a := netip.MustParseAddr
	tests := []struct {
		name string
		q    route.Query
		want trace.Route
	}{{
		name: "pod on this node",
		q:    route.Query{Dst: a("172.16.158.15")},
		want: trace.Route{Dst: netip.MustParsePrefix("172.16.158.15/32"), Dev: "cali7715d358f22", Type: "unicast",
			Table: 254, Text: "172.16.158.15 dev cali7715d358f22 scope link"},
	}, {
		name: "pod on another node, through the tunnel",
		q:    route.Query{Dst: a("172.16.184.7")},
		want: trace.Route{Dst: netip.MustParsePrefix("172.16.184.0/24"), Gateway: a("192.168.10.102"), Dev: "tunl0",
			Type: "unicast", Onlink: true, Table: 254, Text: "172.16.184.0/24 via 192.168.10.102 dev tunl0 onlink"},
	}, {
		name: "unallocated address of the node's own block",
		q:    route.Query{Dst: a("172.16.158.99")},
		want: trace.Route{Dst: netip.MustParsePrefix("172.16.158.0/24"), Type: "blackhole", Table: 254,
			Text: "blackhole 172.16.158.0/24 proto bird"},
	}, {
		name: "local address",
		q:    route.Query{Dst: a("10.0.0.1")},
		want: trace.Route{Dst: netip.MustParsePrefix("10.0.0.1/32"), Dev: "lo", PrefSrc: a("10.0.0.1"), Type: "local",
			Table: 255, Text: "local 10.0.0.1 dev lo table local proto kernel scope host src 10.0.0.1"},
	}, {
		name: "forwarded packet to a local pod",
		q:    route.Query{Src: a("192.168.10.50"), Dst: a("172.16.158.15"), Iif: "eth0"},
		want: trace.Route{Dst: netip.MustParsePrefix("172.16.158.15/32"), Dev: "cali7715d358f22", Type: "unicast",
			Table: 254, Text: "172.16.158.15 dev cali7715d358f22 scope link"},
	}, {
		name: "forwarded packet to an unallocated address",
		q:    route.Query{Src: a("192.168.10.50"), Dst: a("172.16.158.99"), Iif: "eth0"},
		want: trace.Route{Dst: netip.MustParsePrefix("172.16.158.0/24"), Type: "blackhole", Table: 254,
			Text: "blackhole 172.16.158.0/24 proto bird"},
	}, {
		name: "unreachable route",
		q:    route.Query{Dst: a("10.50.1.1")},
		want: trace.Route{Dst: netip.MustParsePrefix("10.50.0.0/16"), Type: "unreachable", Table: 254,
			Text: "unreachable 10.50.0.0/16"},
	}, {
		name: "prohibit route in a policy table",
		q:    route.Query{Dst: a("10.60.1.1")},
		want: trace.Route{Dst: netip.MustParsePrefix("10.60.0.0/16"), Type: "prohibit", Table: 100,
			Text: "prohibit 10.60.0.0/16 table 100"},
	}, {
		name: "marked packet takes its policy table",
		q:    route.Query{Dst: a("10.70.1.1"), Mark: 0x10},
		want: trace.Route{Dst: netip.MustParsePrefix("10.70.0.0/16"), Dev: "eth0", Type: "unicast", Table: 200,
			Text: "10.70.0.0/16 dev eth0 table 200 scope link"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got trace.Route
			err := route.InNetns(n.Path(), func() error {
				var err error
				got, err = route.Lookup(tt.q)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Lookup(%+v) =\n %+v\nwant\n %+v", tt.q, got, tt.want)
			}
		})
	}

	t.Run("unmarked packet finds no route", func(t *testing.T) {
		err := route.InNetns(n.Path(), func() error {
			_, err := route.Lookup(route.Query{Dst: a("10.70.1.1")})
			return err
		})
		if !errors.Is(err, route.ErrNoRoute) {
			t.Errorf("Lookup of an address no table routes: %v, want ErrNoRoute", err)
		}
	})
	t.Run("hop", func(t *testing.T) {
		var hop trace.Hop
		err := route.InNetns(n.Path(), func() error {
			var err error
			hop, err = route.LookupHop("k8s-w1", route.Query{Dst: a("172.16.184.7")})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if hop.Kind != trace.HopRoute || hop.Source != "fib" || hop.Note != "lookup" || hop.Node != "k8s-w1" ||
			hop.Time.IsZero() || hop.Route == nil || hop.Route.Text != "172.16.184.0/24 via 192.168.10.102 dev tunl0 onlink" {
			t.Errorf("LookupHop = %+v (route %+v), want a fib lookup hop on k8s-w1", hop, hop.Route)
		}
	})
}

// pod gives netns p a veth to node n: eth0 in the pod with ip/32, host end
// hostVeth in the node with a /32 route to ip.
func pod(t *testing.T, n, p ns.NetNS, hostVeth, ip string) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVeth},
			PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.Fd()))})
	})
	if err != nil {
		t.Fatalf("adding veth %s: %v", hostVeth, err)
	}
	probetest.Run(t, n, "ip", "link", "set", hostVeth, "up")
	probetest.Run(t, n, "ip", "route", "add", ip, "dev", hostVeth, "scope", "link")
	probetest.Run(t, p, "ip", "link", "set", "eth0", "up")
	probetest.Run(t, p, "ip", "addr", "add", ip+"/32", "dev", "eth0")
}

func TestFindPod(t *testing.T) {
	n, web, decoy := node(t), newNS(t), newNS(t)
	// Both pods' eth0 get the same ifindex in their fresh namespaces: only
	// the netns id, the link back to the host end and the address tell
	// them apart.
	pod(t, n, decoy, "cali0000decoy00", "172.16.158.20")
	pod(t, n, web, "calib2a1f0c3d4e", "172.16.158.16")

	var got route.Pod
	err := route.InNetns(n.Path(), func() error {
		var err error
		got, err = route.FindPod(netip.MustParseAddr("172.16.158.16"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.HostVeth != "calib2a1f0c3d4e" || got.PeerName != "eth0" || got.Netns != web.Path() ||
		got.IP != netip.MustParseAddr("172.16.158.16") || got.HostIndex == 0 || got.PeerIndex == 0 {
		t.Errorf("FindPod = %+v, want calib2a1f0c3d4e to eth0 in %s", got, web.Path())
	}

	// The path found is the pod's netns: eth0 there has the pod's IP.
	err = route.InNetns(got.Netns, func() error {
		link, err := netlink.LinkByIndex(got.PeerIndex)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IP.String() != "172.16.158.16" {
			t.Errorf("in %s, interface %d has %v, want 172.16.158.16", got.Netns, got.PeerIndex, addrs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	err = route.InNetns(n.Path(), func() error {
		_, err := route.FindPod(netip.MustParseAddr("172.16.184.7"))
		return err
	})
	if err == nil {
		t.Error("FindPod of a pod behind the tunnel succeeded, want an error: it is not on this node")
	}
}
