package lab

import (
	"net/netip"
	"strings"
	"testing"
)

func TestTopologyFollowsTheSeed(t *testing.T) {
	topo, err := NewTopology(4, netip.MustParsePrefix("192.168.10.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"k8s-m 192.168.10.10", "k8s-w1 192.168.10.101", "k8s-w2 192.168.10.102", "k8s-w3 192.168.10.103"}
	for i, n := range topo.Nodes {
		if got := n.Name + " " + n.IP.String(); got != want[i] {
			t.Errorf("node %d: %s, want %s", i, got, want[i])
		}
	}
	if !topo.Nodes[0].Master || topo.Nodes[1].Master {
		t.Error("only k8s-m is the control-plane node")
	}
	if topo.Gateway.String() != "192.168.10.1" || topo.HostIP.String() != "192.168.10.254" {
		t.Errorf("gateway %s, host %s", topo.Gateway, topo.HostIP)
	}
	if n := topo.Nodes[2]; n.Netns() != "nettrace-k8s-w2" {
		t.Errorf("netns of k8s-w2: %s", n.Netns())
	}
	for _, bad := range []int{0, 101} {
		if _, err := NewTopology(bad, netip.MustParsePrefix("192.168.10.0/24")); err == nil {
			t.Errorf("%d nodes accepted", bad)
		}
	}
	if _, err := NewTopology(3, netip.MustParsePrefix("192.168.10.0/25")); err == nil {
		t.Error("a /25 underlay accepted: the workers start at .101 and the host is .254")
	}
}

func TestConfigValidation(t *testing.T) {
	if err := func() error { c := DefaultConfig(); return c.Validate() }(); err != nil {
		t.Fatalf("the default configuration is invalid: %v", err)
	}
	for name, c := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"proxy":         {func(c *Config) { c.ServiceProxy = "ipvs" }, "--service-proxy"},
		"encapsulation": {func(c *Config) { c.Encapsulation = "geneve" }, "--encapsulation"},
		"ipv6 pool":     {func(c *Config) { c.PodPool = netip.MustParsePrefix("fd00::/48") }, "IPv4"},
		"overlap":       {func(c *Config) { c.PodPool = netip.MustParsePrefix("10.96.0.0/16") }, "must not overlap"},
		"block size":    {func(c *Config) { c.BlockSize = 8 }, "block size"},
		"lb pool":       {func(c *Config) { c.LoadBalancerPool = netip.MustParsePrefix("10.0.0.0/29") }, "load-balancer pool"},
	} {
		cfg := DefaultConfig()
		c.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", name, err, c.want)
		}
	}
}
