package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam/ipamtest"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

// wantPlumbing checks, with iproute2 and /proc/sys as a person would, that
// the pod has its address and routes and the node its veth, sysctls and
// route.
func wantPlumbing(t *testing.T, node *testNode, p *testPod, raw types.Result, mtu int) {
	t.Helper()
	addr := resultAddr(t, raw)
	res := asCurrent(t, raw)
	host := p.hostVeth()
	if len(res.Interfaces) != 2 ||
		res.Interfaces[0].Name != host || res.Interfaces[0].Mac != "ee:ee:ee:ee:ee:ee" || res.Interfaces[0].Sandbox != "" ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != p.ns.Path() {
		t.Fatalf("result interfaces = %v", res.Interfaces)
	}
	if ones, _ := res.IPs[0].Address.Mask.Size(); ones != 32 || !res.IPs[0].Gateway.Equal(net.IPv4(169, 254, 1, 1)) {
		t.Fatalf("result IP = %v", res.IPs[0])
	}

	link := p.run(t, "ip", "-o", "link", "show", "eth0")
	addrs := p.run(t, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	routes := p.run(t, "ip", "-4", "route", "show")
	if !strings.Contains(link, fmt.Sprintf("mtu %d", mtu)) || !strings.Contains(link, "UP") {
		t.Errorf("pod eth0: %s (want mtu %d, up)", link, mtu)
	}
	if !strings.Contains(addrs, "inet "+addr.String()+"/32 ") {
		t.Errorf("pod eth0 addresses: %s (want %s/32)", addrs, addr)
	}
	if want := "default via 169.254.1.1 dev eth0 \n169.254.1.1 dev eth0 scope link \n"; routes != want {
		t.Errorf("pod routes:\n%s\nwant:\n%s", routes, want)
	}

	hostLink := runIn(t, node.ns, "ip", "-o", "link", "show", host)
	hostRoutes := runIn(t, node.ns, "ip", "-4", "route", "show", "dev", host)
	if !strings.Contains(hostLink, "link/ether ee:ee:ee:ee:ee:ee") || !strings.Contains(hostLink, fmt.Sprintf("mtu %d", mtu)) ||
		!strings.Contains(hostLink, "state UP") {
		t.Errorf("host veth: %s (want MAC ee:ee:ee:ee:ee:ee, mtu %d, state UP)", hostLink, mtu)
	}
	if want := addr.String() + " scope link \n"; hostRoutes != want {
		t.Errorf("routes via %s: %q, want %q", host, hostRoutes, want)
	}
	for file, want := range map[string]string{
		"net/ipv4/conf/" + host + "/proxy_arp":      "1",
		"net/ipv4/neigh/" + host + "/proxy_delay":   "0",
		"net/ipv4/conf/" + host + "/forwarding":     "1",
		"net/ipv4/conf/" + host + "/route_localnet": "1",
		"net/ipv4/ip_forward":                       "1",
	} {
		if got := strings.TrimSpace(runIn(t, node.ns, "cat", filepath.Join("/proc/sys", file))); got != want {
			t.Errorf("%s = %s in the node, want %s", file, got, want)
		}
	}
}

func TestAddCheckGCDelEverySpecVersion(t *testing.T) {
	node := newNode(t)
	const pool = "10.40.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "versions", pool, 24)
	c := datastore(t)
	ctx := context.Background()

	for _, v := range specVersions {
		t.Run(v, func(t *testing.T) {
			list := node.confList(t, v, pool, nil)
			web := newPod(t, "web-"+v)
			stale := newPod(t, "stale-"+v)
			res, err := node.add(list, web)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			wantPlumbing(t, node, web, res, uplinkMTU-20)
			addr := resultAddr(t, res)
			if held, ok, err := c.AddressOf(ctx, web.id); err != nil || !ok || held != addr {
				t.Fatalf("datastore: %s holds %s, %v, %v; want %s", web.id, held, ok, err, addr)
			}

			supportsCheck, _ := version.GreaterThanOrEqualTo(v, "0.4.0")
			if !supportsCheck {
				if err := node.check(list, web); err == nil {
					t.Fatal("CHECK succeeded on a spec version without CHECK")
				}
			} else {
				if err := node.check(list, web); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
				runIn(t, node.ns, "ip", "route", "del", addr.String()+"/32", "dev", web.hostVeth())
				if err := node.check(list, web); err == nil || !strings.Contains(err.Error(), "is missing") {
					t.Fatalf("CHECK without the host route: %v, want a missing route", err)
				}
				runIn(t, node.ns, "ip", "route", "add", addr.String()+"/32", "dev", web.hostVeth(), "scope", "link")
				if err := node.check(list, web); err != nil {
					t.Fatalf("CHECK after restoring the route: %v", err)
				}
			}

			staleRes, err := node.add(list, stale)
			if err != nil {
				t.Fatalf("ADD of a second pod: %v", err)
			}
			staleAddr := resultAddr(t, staleRes)
			if err := node.gc(list, web); err != nil {
				t.Fatalf("GC: %v", err)
			}
			held := podAddresses(t, c, pool)
			if _, ok := held[stale.id]; ok || held[web.id] != addr {
				t.Fatalf("after GC keeping only web: %v; want web=%s, stale (%s) gone", held, addr, staleAddr)
			}
			if slices.Contains(node.caliLinks(t), stale.hostVeth()) {
				t.Fatal("GC left the stale pod's veth")
			}

			for i := range 2 {
				if err := node.del(list, web); err != nil {
					t.Fatalf("DEL #%d: %v", i+1, err)
				}
			}
			if _, ok, _ := c.AddressOf(ctx, web.id); ok {
				t.Fatal("DEL left the address allocated")
			}
			if links := node.caliLinks(t); len(links) != 0 {
				t.Fatalf("DEL left veths %v", links)
			}
			if out := web.run(t, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
				t.Fatalf("DEL left eth0 in the pod: %s", out)
			}
		})
	}
	if held := podAddresses(t, c, pool); len(held) != 0 {
		t.Fatalf("addresses left: %v", held)
	}
}

func TestDelOfAnUnknownContainer(t *testing.T) {
	node := newNode(t)
	const pool = "10.45.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "unknown", pool, 24)
	list := node.confList(t, "1.1.0", pool, nil)
	ghost := newPod(t, "ghost")
	if err := node.del(list, ghost); err != nil {
		t.Fatalf("DEL of a container never added: %v", err)
	}
	ghost.remove(t)
	if err := node.del(list, ghost); err != nil {
		t.Fatalf("DEL with a netns that is gone: %v", err)
	}
}

func TestGCReleasesAttachmentsTheRuntimeLost(t *testing.T) {
	node := newNode(t)
	const pool = "10.46.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "gc", pool, 24)
	list := node.confList(t, "1.1.0", pool, nil)
	c := datastore(t)

	kept, lost := newPod(t, "kept"), newPod(t, "lost")
	if _, err := node.add(list, kept); err != nil {
		t.Fatal(err)
	}
	// The runtime lost its record of this one (a separate cache), so only
	// the plugin's GC can find it.
	forgetful := *node
	forgetful.cni = newCNIConfig(t)
	lostRes, err := forgetful.add(list, lost)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.gc(list, kept); err != nil {
		t.Fatalf("GC: %v", err)
	}
	held := podAddresses(t, c, pool)
	if len(held) != 1 || !held[kept.id].IsValid() {
		t.Fatalf("after GC: %v, want only the kept pod", held)
	}
	if links := node.caliLinks(t); !slices.Equal(links, []string{kept.hostVeth()}) {
		t.Fatalf("veths after GC: %v, want only %s", links, kept.hostVeth())
	}
	if _, ok := node.hostRoutes(t)[resultAddr(t, lostRes)]; ok {
		t.Fatal("GC left the route to the lost pod")
	}
	if err := node.del(list, kept); err != nil {
		t.Fatal(err)
	}
}

func TestProxyARPAndPingOnOneNode(t *testing.T) {
	node := newNode(t)
	const pool = "10.41.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "ping", pool, 24)
	list := node.confList(t, "1.1.0", pool, nil)
	a, b := newPod(t, "ping-a"), newPod(t, "ping-b")
	resA, err := node.add(list, a)
	if err != nil {
		t.Fatal(err)
	}
	resB, err := node.add(list, b)
	if err != nil {
		t.Fatal(err)
	}
	addrA, addrB := resultAddr(t, resA).String(), resultAddr(t, resB).String()
	for _, ping := range []struct {
		from *testPod
		src  string
		dst  string
	}{{a, addrA, addrB}, {b, addrB, addrA}} {
		err := ping.from.ns.Do(func(ns.NetNS) error { return testutils.Ping(ping.src, ping.dst, 2) })
		if err != nil {
			t.Fatalf("ping %s -> %s: %v", ping.src, ping.dst, err)
		}
	}
	// The pod resolved its gateway, an address nobody has, by proxy ARP:
	// the host side answered with its MAC.
	for _, p := range []*testPod{a, b} {
		var neigh []netlink.Neigh
		err := p.ns.Do(func(ns.NetNS) error {
			eth0, err := netlinksafe.LinkByName("eth0")
			if err != nil {
				return err
			}
			neigh, err = netlink.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, n := range neigh {
			if n.IP.Equal(net.IPv4(169, 254, 1, 1)) {
				found = true
				if n.HardwareAddr.String() != "ee:ee:ee:ee:ee:ee" {
					t.Fatalf("pod %s: 169.254.1.1 is at %s, want ee:ee:ee:ee:ee:ee", p.name, n.HardwareAddr)
				}
			}
		}
		if !found {
			t.Fatalf("pod %s has no neighbour entry for 169.254.1.1: %v\n%s", p.name, neigh, p.run(t, "ip", "neigh"))
		}
	}
	for _, p := range []*testPod{a, b} {
		if err := node.del(list, p); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFailedAddLeavesNothing(t *testing.T) {
	node := newNode(t)
	const pool = "10.42.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "fail", pool, 24)
	list := node.confList(t, "1.1.0", pool, nil)
	c := datastore(t)

	nothingLeft := func(t *testing.T, p *testPod) {
		t.Helper()
		if held := podAddresses(t, c, pool); len(held) != 0 {
			t.Errorf("addresses left: %v", held)
		}
		handles, err := c.Handles(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range handles {
			if h.Spec.Node == node.name {
				t.Errorf("handle left: %+v", h.Spec)
			}
		}
		if links := node.caliLinks(t); len(links) != 0 {
			t.Errorf("veths left: %v", links)
		}
		if routes := node.hostRoutes(t); len(routes) != 0 {
			t.Errorf("routes left: %v", routes)
		}
		if out := p.run(t, "ip", "-o", "link", "show", "type", "veth"); strings.Contains(out, "eth0") {
			t.Errorf("veth left in the pod: %s", out)
		}
	}

	t.Run("pod already has a default route", func(t *testing.T) {
		p := newPod(t, "routed")
		p.run(t, "ip", "link", "add", "blocker", "type", "veth", "peer", "name", "blockerp")
		p.run(t, "ip", "addr", "add", "198.51.100.2/24", "dev", "blocker")
		p.run(t, "ip", "link", "set", "blocker", "up")
		p.run(t, "ip", "route", "add", "default", "via", "198.51.100.1")
		_, err := node.add(list, p)
		if err == nil || !strings.Contains(err.Error(), "default route") {
			t.Fatalf("ADD: %v, want a failure to add the default route", err)
		}
		nothingLeft(t, p)
	})
	t.Run("pod already has eth0", func(t *testing.T) {
		p := newPod(t, "taken")
		p.run(t, "ip", "link", "add", "eth0", "type", "bridge")
		if _, err := node.add(list, p); err == nil {
			t.Fatal("ADD succeeded although the pod has an eth0")
		}
		nothingLeft(t, p)
		if err := node.del(list, p); err != nil {
			t.Fatalf("DEL after the failed ADD: %v", err)
		}
		if out := p.run(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "eth0") {
			t.Fatal("DEL removed an eth0 that the plugin did not make")
		}
	})
}

func TestErrorCodes(t *testing.T) {
	node := newNode(t)
	const pool = "10.47.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "codes", pool, 24)
	dead := filepath.Join(t.TempDir(), "dead.kubeconfig")
	kubeconfig, err := os.ReadFile(node.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// The same credentials, to a port where nothing listens.
	lines := strings.Split(string(kubeconfig), "\n")
	for i, l := range lines {
		if strings.Contains(l, "server:") {
			lines[i] = "    server: https://127.0.0.1:1"
		}
	}
	if err := os.WriteFile(dead, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		pool  string
		extra map[string]any
		code  uint
		msg   string
	}{
		{"unknown field", pool, map[string]any{"colour": "blue"}, types.ErrUnsupportedField, `unsupported field "colour": "blue"`},
		{"mtu of the wrong type", pool, map[string]any{"mtu": "1500"}, types.ErrInvalidNetworkConfig, `field "mtu" is a JSON string, want a number`},
		{"missing pool", "no-such-pool", nil, types.ErrInvalidNetworkConfig, `IPPool not found: "no-such-pool"`},
		{"pool CIDR of no pool", "10.250.0.0/16", nil, types.ErrInvalidNetworkConfig, "no IPPool has cidr 10.250.0.0/16"},
		{"bad pool CIDR", "10.47.0.1/16", nil, types.ErrInvalidNetworkConfig, "host bits"},
		{"missing kubeconfig", pool, map[string]any{"kubeconfig": "/nonexistent/kubeconfig"}, types.ErrInvalidNetworkConfig, "/nonexistent/kubeconfig"},
		{"datastore unreachable", pool, map[string]any{"kubeconfig": dead}, types.ErrTryAgainLater, "127.0.0.1:1"},
	}
	c := datastore(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPod(t, "codes")
			_, err := node.add(node.confList(t, "1.1.0", tt.pool, tt.extra), p)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != tt.code || !strings.Contains(cniErr.Msg, tt.msg) {
				t.Fatalf("ADD: %v, want code %d with %q", err, tt.code, tt.msg)
			}
			if held := podAddresses(t, c, pool); len(held) != 0 {
				t.Fatalf("addresses left: %v", held)
			}
			if links := node.caliLinks(t); len(links) != 0 {
				t.Fatalf("veths left: %v", links)
			}
		})
	}

	if err := node.status(node.confList(t, "1.1.0", pool, nil)); err != nil {
		t.Fatalf("STATUS with a reachable datastore: %v", err)
	}
	for _, tt := range []struct {
		pool  string
		extra map[string]any
	}{{pool, map[string]any{"kubeconfig": dead}}, {"no-such-pool", nil}} {
		err := node.status(node.confList(t, "1.1.0", tt.pool, tt.extra))
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable {
			t.Fatalf("STATUS with pool %s, %v: %v, want code 50", tt.pool, tt.extra, err)
		}
	}
}
