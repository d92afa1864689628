package loadbalancer

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// hashOrder sorts nodes by the hex of sha256(node#ip), the order MetalLB
// documents, computed independently of Announcer.
func hashOrder(ip string, nodes []string) []string {
	order := slices.Clone(nodes)
	key := func(n string) string {
		sum := sha256.Sum256([]byte(n + "#" + ip))
		return hex.EncodeToString(sum[:])
	}
	slices.SortFunc(order, func(a, b string) int {
		ka, kb := key(a), key(b)
		switch {
		case ka < kb:
			return -1
		case ka > kb:
			return 1
		}
		return 0
	})
	return order
}

func TestAnnouncerFollowsHashOrder(t *testing.T) {
	nodes := []string{"k8s-m", "k8s-w1", "k8s-w2", "k8s-w3", "k8s-w4"}
	winners := map[string]bool{}
	for _, ip := range []string{"192.168.10.200", "192.168.10.201", "192.168.10.202", "192.168.10.203",
		"192.168.10.204", "192.168.10.205", "192.168.10.206", "192.168.10.207"} {
		addr := netip.MustParseAddr(ip)
		order := hashOrder(ip, nodes)

		// Removing the announcer each time walks the whole order: that is
		// the failover sequence.
		remaining := slices.Clone(nodes)
		for i, want := range order {
			got, ok := Announcer(addr, remaining)
			if !ok || got != want {
				t.Fatalf("%s: announcer among %v = %q, %v; want %q (position %d of %v)", ip, remaining, got, ok, want, i, order)
			}
			remaining = slices.DeleteFunc(remaining, func(n string) bool { return n == got })
		}
		winners[order[0]] = true

		// The input order does not matter.
		reversed := slices.Clone(nodes)
		slices.Reverse(reversed)
		if got, _ := Announcer(addr, reversed); got != order[0] {
			t.Errorf("%s: announcer depends on the input order: %q, want %q", ip, got, order[0])
		}
	}
	// Eight addresses over five nodes: the hash spreads them.
	if len(winners) < 2 {
		t.Errorf("every address went to %v", winners)
	}
}

func TestAnnouncerWithoutEligibleNodes(t *testing.T) {
	if got, ok := Announcer(netip.MustParseAddr("192.168.10.200"), nil); ok {
		t.Errorf("Announcer(no nodes) = %q, true; want false", got)
	}
}

func TestEligibleNodes(t *testing.T) {
	notReadyNoCondition := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "k8s-new"}}
	excluded := node("k8s-m", true)
	excluded.Labels = map[string]string{ExcludeLabel: ""}
	nodes := []*v1.Node{node("k8s-w2", true), node("k8s-w1", true), node("k8s-w3", false), notReadyNoCondition, excluded, node("k8s-w4", true)}

	ready, notReady := true, false
	endpoint := func(node string, ready *bool) discovery.Endpoint {
		return discovery.Endpoint{Addresses: []string{"172.16.0.1"}, NodeName: &node, Conditions: discovery.EndpointConditions{Ready: ready}}
	}
	slice := func(namespace, service string, endpoints ...discovery.Endpoint) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: service + "-abcde",
				Labels: map[string]string{discovery.LabelServiceName: service}},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   endpoints,
		}
	}
	local := func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }

	for _, tc := range []struct {
		name   string
		svc    *v1.Service
		slices []*discovery.EndpointSlice
		want   []string
	}{{
		name: "cluster policy: every ready node not excluded",
		svc:  lbService("web"),
		want: []string{"k8s-w1", "k8s-w2", "k8s-w4"},
	}, {
		name: "local policy: ready nodes with a ready local endpoint",
		svc:  lbService("web", local),
		slices: []*discovery.EndpointSlice{
			// Ready unset means ready.
			slice("default", "web", endpoint("k8s-w1", nil), endpoint("k8s-w2", &notReady)),
			slice("default", "web", endpoint("k8s-w4", &ready), endpoint("k8s-w3", &ready), endpoint("k8s-m", &ready)),
			// Another service's slice, and one of a namesake in another namespace.
			slice("default", "db", endpoint("k8s-w2", &ready)),
			slice("other", "web", endpoint("k8s-w2", &ready)),
		},
		want: []string{"k8s-w1", "k8s-w4"},
	}, {
		name:   "local policy without ready endpoints: no node",
		svc:    lbService("web", local),
		slices: []*discovery.EndpointSlice{slice("default", "web", endpoint("k8s-w1", &notReady))},
		want:   nil,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := EligibleNodes(tc.svc, nodes, tc.slices)
			if !slices.Equal(got, tc.want) {
				t.Errorf("EligibleNodes = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestVIPAddrs(t *testing.T) {
	proxy, vip := v1.LoadBalancerIPModeProxy, v1.LoadBalancerIPModeVIP
	svc := lbService("web")
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
		{IP: "192.168.10.200"}, // ipMode unset means VIP
		{IP: "192.168.10.201", IPMode: &proxy},
		{Hostname: "lb.example.com"},
		{IP: "192.168.10.202", IPMode: &vip},
	}
	got := vipAddrs(svc)
	want := []netip.Addr{netip.MustParseAddr("192.168.10.200"), netip.MustParseAddr("192.168.10.202")}
	if !slices.Equal(got, want) {
		t.Errorf("vipAddrs = %v, want %v", got, want)
	}
}
