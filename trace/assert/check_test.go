package assert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// fixture reads a path that trace/correlate's golden tests made.
func fixture(t *testing.T, name string) trace.Path {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "correlate", "testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var p trace.Path
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeCluster is the cluster of the fixtures: the seed's addresses.
type fakeCluster struct{}

var fixturePods = map[string][]Pod{
	"app=nginx-test": {
		{Name: "default/nginx-test-a", IP: netip.MustParseAddr("172.16.184.2")},
		{Name: "default/nginx-test-b", IP: netip.MustParseAddr("172.16.158.3")},
	},
	"app=other": {{Name: "default/other-a", IP: netip.MustParseAddr("172.16.158.9")}},
}

func (fakeCluster) Pods(_ context.Context, namespace, selector string) ([]Pod, error) {
	if namespace != "default" {
		return nil, nil
	}
	return fixturePods[selector], nil
}

func (fakeCluster) Pod(_ context.Context, namespace, name string) (Pod, error) {
	for _, pods := range fixturePods {
		for _, p := range pods {
			if p.Name == namespace+"/"+name {
				return p, nil
			}
		}
	}
	return Pod{}, fmt.Errorf("pods %q not found", name)
}

func (fakeCluster) NodeAddresses(_ context.Context, node string) ([]netip.Addr, error) {
	switch node {
	case "k8s-w1":
		return []netip.Addr{netip.MustParseAddr("192.168.10.101"), netip.MustParseAddr("172.16.158.0")}, nil
	case "k8s-w2":
		return []netip.Addr{netip.MustParseAddr("192.168.10.102"), netip.MustParseAddr("172.16.184.0")}, nil
	}
	return nil, fmt.Errorf("nodes %q not found", node)
}

// checkCase parses one case of expectations and checks the fixture's
// path against it.
func checkCase(t *testing.T, fixtureName, expect string) []Failure {
	t.Helper()
	file := "cases:\n  - source: client\n    target: svc/nginx-test\n    namespace: default\n    expect:\n" + expect
	f, err := Parse("paths.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	failures, err := Check(context.Background(), f.Cases[0], fixture(t, fixtureName), fakeCluster{})
	if err != nil {
		t.Fatal(err)
	}
	return failures
}

func TestCheckHolds(t *testing.T) {
	for _, c := range []struct{ fixture, expect string }{
		{"clusterip-across-nodes", `
      verdict: replied
      nat:
        - {type: DNAT, to: {selector: app=nginx-test}}
        - {type: DNAT, to: {selector: app=nginx-test, port: 80}}
        - {type: DNAT, to: {pod: nginx-test-a}}
        - {type: DNAT, to: {pod: default/nginx-test-a}}
        - {type: DNAT, to: {ip: 172.16.184.2, port: 80}}
      tunnel: ipip
      hits:
        - {table: nat, chain: KUBE-SVC-*}
        - {chain: KUBE-SEP-TOJ6KBVFMXNEZ7KU, node: k8s-w1}
        - {table: filter, chain: cali-*, node: k8s-w2}
        - {rule: "-j KUBE-SVC-"}
      misses:
        - {chain: KUBE-MARK-MASQ}
        - {table: nat, node: k8s-w2}
        - {rule: MASQUERADE}
`},
		{"nodeport-via-other-node", `
      verdict: replied
      nat:
        - {type: DNAT, to: {selector: app=nginx-test, port: 80}}
        - {type: SNAT, to: {node: k8s-w1}}
        - {type: SNAT}
      tunnel: ipip
      hits:
        - {chain: KUBE-NODEPORTS}
        - {chain: KUBE-EXT-*}
        - {chain: KUBE-POSTROUTING, rule: MASQUERADE}
`},
		{"same-node-proxy-arp", `
      verdict: replied
      nat: []
      tunnel: none
      hits:
        - {table: filter, chain: cali-FORWARD}
`},
		{"reject-no-endpoints", `
      verdict: dropped by KUBE-SERVICES
      nat: []
      tunnel: none
`},
		{"reject-no-endpoints", `
      verdict: dropped by *REJECT
`},
		{"forward-policy-drop", `
      verdict: dropped by FORWARD
`},
		{"lost-on-the-way", `
      verdict: no-answer
      tunnel: ipip
`},
		{"pod-to-pod-ipip-skewed", `
      verdict: replied
      nat: []
      tunnel: ipip
`},
	} {
		if f := checkCase(t, c.fixture, c.expect); len(f) != 0 {
			t.Errorf("%s: %+v, want every expectation met:%s", c.fixture, f, c.expect)
		}
	}
}

func TestCheckFails(t *testing.T) {
	for _, c := range []struct {
		name, fixture, expect string
		// want are, for each failure, its line and words that its
		// expected and observed texts hold.
		want []Failure
	}{
		{
			name: "verdict", fixture: "reject-no-endpoints", expect: "      verdict: replied\n",
			want: []Failure{{Line: 6, Field: "cases[0].expect.verdict", Expected: "replied",
				Observed: "dropped at [k8s-w1] filter KUBE-SERVICES #3 REJECT: default/nginx-test:80 has no endpoints"}},
		},
		{
			name: "dropped elsewhere", fixture: "forward-policy-drop", expect: "      verdict: dropped by KUBE-*\n",
			want: []Failure{{Line: 6, Expected: "dropped by KUBE-*", Observed: "dropped at [k8s-w1] filter FORWARD policy DROP"}},
		},
		{
			name: "DNAT to other pods", fixture: "clusterip-across-nodes",
			expect: "      nat:\n        - type: DNAT\n          to: {selector: app=other}\n",
			want: []Failure{{Line: 7, Field: "cases[0].expect.nat[0]",
				Expected: "DNAT to a pod that app=other selects (default/other-a 172.16.158.9)",
				Observed: "DNAT 10.104.209.155:80 → 172.16.184.2:80 on k8s-w1 by KUBE-SEP-TOJ6KBVFMXNEZ7KU"}},
		},
		{
			name: "DNAT to a selector that selects nothing", fixture: "clusterip-across-nodes",
			expect: "      nat:\n        - {type: DNAT, to: {selector: app=gone}}\n",
			want:   []Failure{{Line: 7, Expected: "it selects none in namespace default"}},
		},
		{
			name: "DNAT to another port", fixture: "clusterip-across-nodes",
			expect: "      nat:\n        - {type: DNAT, to: {ip: 172.16.184.2, port: 8080}}\n",
			want:   []Failure{{Line: 7, Expected: "DNAT to 172.16.184.2 port 8080", Observed: "→ 172.16.184.2:80"}},
		},
		{
			name: "SNAT missing", fixture: "clusterip-across-nodes",
			expect: "      nat:\n        - {type: SNAT, to: {node: k8s-w1}}\n",
			want: []Failure{{Line: 7, Expected: "SNAT to node k8s-w1 (192.168.10.101, 172.16.158.0)",
				Observed: "DNAT 10.104.209.155:80 → 172.16.184.2:80"}},
		},
		{
			name: "SNAT to the other node", fixture: "nodeport-via-other-node",
			expect: "      nat:\n        - {type: SNAT, to: {node: k8s-w2}}\n",
			want:   []Failure{{Line: 7, Expected: "SNAT to node k8s-w2", Observed: "SNAT 192.168.10.200:40001 → 172.16.158.0:61234 on k8s-w1 by KUBE-POSTROUTING"}},
		},
		{
			name: "no NAT expected", fixture: "nodeport-via-other-node", expect: "      nat: []\n",
			want: []Failure{{Line: 6, Field: "cases[0].expect.nat", Expected: "no NAT", Observed: "DNAT 192.168.10.101:31010 → 172.16.184.2:80"}},
		},
		{
			name: "NAT expected, none", fixture: "same-node-proxy-arp", expect: "      nat:\n        - {type: DNAT}\n",
			want: []Failure{{Line: 7, Expected: "DNAT", Observed: "no NAT"}},
		},
		{
			name: "tunnel expected", fixture: "same-node-proxy-arp", expect: "      tunnel: ipip\n",
			want: []Failure{{Line: 6, Field: "cases[0].expect.tunnel", Expected: "ipip", Observed: "none: no hop was encapsulated"}},
		},
		{
			name: "no tunnel expected", fixture: "clusterip-across-nodes", expect: "      tunnel: none\n",
			want: []Failure{{Line: 6, Expected: "no tunnel", Observed: "ipip, first on k8s-w1: ipip 192.168.10.101 → 192.168.10.102"}},
		},
		{
			name: "another tunnel", fixture: "pod-to-pod-ipip-skewed", expect: "      tunnel: vxlan\n",
			want: []Failure{{Line: 6, Expected: "vxlan", Observed: "ipip"}},
		},
		{
			name: "chain of another service", fixture: "clusterip-across-nodes",
			expect: "      hits:\n        - {table: nat, chain: KUBE-SVC-W67AXLFK7VEUVN6G}\n",
			want: []Failure{{Line: 7, Field: "cases[0].expect.hits[0]", Expected: "a hop of table nat, chain KUBE-SVC-W67AXLFK7VEUVN6G",
				Observed: "no rule hop matches; the path went through [k8s-w1] nat PREROUTING, KUBE-SERVICES, KUBE-SVC-2VLBFIULZRMG6NS3, KUBE-SEP-TOJ6KBVFMXNEZ7KU"}},
		},
		{
			name: "hit on the wrong node", fixture: "clusterip-across-nodes",
			expect: "      hits:\n        - {chain: KUBE-SVC-*, node: k8s-w2}\n",
			want:   []Failure{{Line: 7, Expected: "chain KUBE-SVC-*, on node k8s-w2"}},
		},
		{
			name: "rule text", fixture: "same-node-proxy-arp", expect: "      hits:\n        - {rule: DNAT}\n",
			want: []Failure{{Line: 7, Expected: `a rule with "DNAT"`}},
		},
		{
			name: "miss hit", fixture: "nodeport-via-other-node", expect: "      misses:\n        - {chain: KUBE-MARK-MASQ}\n",
			want: []Failure{{Line: 7, Field: "cases[0].expect.misses[0]", Expected: "no hop of chain KUBE-MARK-MASQ",
				Observed: "hit [k8s-w1] nat KUBE-MARK-MASQ #1: -A KUBE-MARK-MASQ"}},
		},
		{
			name: "several, in line order", fixture: "reject-no-endpoints",
			expect: "      verdict: replied\n      tunnel: ipip\n      nat:\n        - {type: DNAT}\n      hits:\n        - {chain: KUBE-SVC-*}\n",
			want:   []Failure{{Line: 6}, {Line: 7}, {Line: 9}, {Line: 11}},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := checkCase(t, c.fixture, c.expect)
			if len(got) != len(c.want) {
				t.Fatalf("failures %+v, want %d", got, len(c.want))
			}
			for i, w := range c.want {
				g := got[i]
				if g.Line != w.Line || w.Field != "" && g.Field != w.Field ||
					!strings.Contains(g.Expected, w.Expected) || !strings.Contains(g.Observed, w.Observed) {
					t.Errorf("failure %d:\n got %+v\nwant %+v", i, g, w)
				}
			}
		})
	}
}

func TestCheckReportsFailedLookups(t *testing.T) {
	f, err := Parse("paths.yaml", []byte("cases:\n  - source: client\n    target: svc/nginx-test\n    expect:\n"+
		"      nat:\n        - {type: DNAT, to: {pod: missing}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Check(context.Background(), f.Cases[0], fixture(t, "clusterip-across-nodes"), fakeCluster{})
	if err == nil || !strings.Contains(err.Error(), `cases[0].expect.nat[0]: pods "missing" not found`) {
		t.Errorf("got %v, want the failed lookup with its place", err)
	}
}

func TestKubeClusterLookups(t *testing.T) {
	pod := func(name, ip string, labels map[string]string, hostNetwork bool) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
			Spec: corev1.PodSpec{HostNetwork: hostNetwork}, Status: corev1.PodStatus{PodIP: ip}}
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "k8s-w1", Annotations: map[string]string{
			"nettrace.dev/ipv4-tunnel-address":             "172.16.198.0",
			"projectcalico.org/IPv4VXLANTunnelAddr":        "172.16.198.1",
			"projectcalico.org/IPv4IPIPTunnelAddr":         "not an address",
			"projectcalico.org/IPv4WireguardInterfaceAddr": "172.16.198.2/32",
		}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.168.10.101"}, {Type: corev1.NodeHostName, Address: "k8s-w1"}}},
	}
	cl := NewCluster(fake.NewClientset(node,
		pod("web-a", "172.16.198.3", map[string]string{"app": "web"}, false),
		pod("web-b", "172.16.19.2", map[string]string{"app": "web"}, false),
		pod("web-host", "192.168.10.101", map[string]string{"app": "web"}, true),
		pod("pending", "", nil, false)))
	ctx := context.Background()

	pods, err := cl.Pods(ctx, "default", "app=web")
	if err != nil || len(pods) != 2 || pods[0].Name != "default/web-a" || pods[1].IP.String() != "172.16.19.2" {
		t.Errorf("Pods(app=web) = %+v, %v; want the two pods with addresses of their own", pods, err)
	}
	if p, err := cl.Pod(ctx, "default", "web-a"); err != nil || p.IP.String() != "172.16.198.3" {
		t.Errorf("Pod(web-a) = %+v, %v", p, err)
	}
	if _, err := cl.Pod(ctx, "default", "missing"); !errors.Is(err, cluster.ErrInvalid) {
		t.Errorf("Pod(missing) = %v, want an invalid error", err)
	}
	if _, err := cl.Pod(ctx, "default", "pending"); !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), "no IPv4 address") {
		t.Errorf("Pod(pending) = %v, want an invalid error", err)
	}
	addrs, err := cl.NodeAddresses(ctx, "k8s-w1")
	var got []string
	for _, a := range addrs {
		got = append(got, a.String())
	}
	if err != nil || strings.Join(got, " ") != "192.168.10.101 172.16.198.0 172.16.198.1 172.16.198.2" {
		t.Errorf("NodeAddresses(k8s-w1) = %v, %v; want its internal and tunnel addresses", got, err)
	}
	if _, err := cl.NodeAddresses(ctx, "k8s-w9"); !errors.Is(err, cluster.ErrInvalid) {
		t.Errorf("NodeAddresses(k8s-w9) = %v, want an invalid error", err)
	}
}
