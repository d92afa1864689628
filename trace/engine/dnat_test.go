package engine

import (
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// negatedRules exercise negations and the selectors the walk reads.
const negatedRules = `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SVC - [0:0]
-A PREROUTING -p udp -j DNAT --to-destination 10.0.0.9:53
-A PREROUTING ! -d 10.96.0.0/12 -j DNAT --to-destination 10.0.0.8:80
-A PREROUTING -p tcp -m multiport --dports 79,80:81 -m comment --comment "quoted \"-j DNAT --to-destination 9.9.9.9\"" -j SVC
-A PREROUTING -m addrtype ! --dst-type LOCAL -p tcp --dport 443 -j DNAT --to-destination 10.0.0.7
-A SVC -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.0.0.1:8080
-A SVC -j DNAT --to-destination 10.0.0.2
-A SVC -j SVC
COMMIT
`

func TestDNATTargets(t *testing.T) {
	kubeProxy, err := os.ReadFile("../netfilter/ruleset/testdata/kube-proxy.save")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name  string
		rules string
		proto trace.Proto
		dst   string
		local bool
		want  []string
	}{
		{"cluster IP, one endpoint", enginetest.Rules, trace.TCP, "10.96.0.100:80", false, []string{"172.16.1.11:80"}},
		{"cluster IP, other port", enginetest.Rules, trace.TCP, "10.96.0.100:81", false, nil},
		{"cluster IP, udp", enginetest.Rules, trace.UDP, "10.96.0.100:80", false, nil},
		{"kube-proxy, both endpoints", string(kubeProxy), trace.TCP, "10.96.0.100:80", false, []string{"10.2.0.2:8080", "10.2.0.3:8080"}},
		{"node port of this node", nodePortRules, trace.UDP, "192.168.10.101:30053", true, []string{"172.16.1.11:8053"}},
		{"node port, not a local address", nodePortRules, trace.UDP, "192.168.10.102:30053", false, nil},
		{"negations and ranges", negatedRules, trace.TCP, "10.96.0.5:81", true, []string{"10.0.0.1:8080", "10.0.0.2:81"}},
		{"not local", negatedRules, trace.TCP, "10.96.0.5:443", false, []string{"10.0.0.7:443"}},
		{"outside the prefix", negatedRules, trace.UDP, "192.0.2.1:53", false, []string{"10.0.0.9:53", "10.0.0.8:80"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			save, err := ruleset.ParseSave(tc.rules)
			if err != nil {
				t.Fatal(err)
			}
			var want []netip.AddrPort
			for _, w := range tc.want {
				want = append(want, ap(w))
			}
			if got := dnatTargets(save, tc.proto, ap(tc.dst), tc.local); !slices.Equal(got, want) {
				t.Errorf("dnatTargets(%s %s, local %t) = %v, want %v", tc.proto, tc.dst, tc.local, got, want)
			}
		})
	}
}

// TestNftDNATTargets reads the nftables ruleset that the real kube-proxy
// v1.37.2 wrote in its nftables mode on the lab's k8s-w1 (node address
// 192.168.10.101): kube-dns's two endpoints behind a numgen map, a node
// port, and a ClusterIP with one endpoint.
func TestNftDNATTargets(t *testing.T) {
	listing, err := os.ReadFile("testdata/kube-proxy-nftables.json")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name  string
		proto trace.Proto
		dst   string
		local bool
		want  []string
	}{
		{"kube-dns over udp", trace.UDP, "10.96.0.10:53", false, []string{"172.16.198.1:53", "172.16.65.1:53"}},
		{"kube-dns, another port", trace.UDP, "10.96.0.10:54", false, nil},
		{"cluster IP of nodeport-dnat", trace.TCP, "10.109.13.118:80", false, []string{"172.16.198.8:80"}},
		{"node port of this node", trace.TCP, "192.168.10.101:31010", true, []string{"172.16.198.8:80"}},
		{"node port of another node", trace.TCP, "192.168.10.102:31010", false, nil},
		{"node port over udp", trace.UDP, "192.168.10.101:31010", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nftDNATTargets(listing, tc.proto, ap(tc.dst), tc.local)
			if err != nil {
				t.Fatal(err)
			}
			var want []netip.AddrPort
			for _, w := range tc.want {
				want = append(want, ap(w))
			}
			slices.SortFunc(got, netip.AddrPort.Compare)
			slices.SortFunc(want, netip.AddrPort.Compare)
			if !slices.Equal(got, want) {
				t.Errorf("nftDNATTargets(%s %s, local %t) = %v, want %v", tc.proto, tc.dst, tc.local, got, want)
			}
		})
	}
	if _, err := nftDNATTargets([]byte("{"), trace.TCP, ap("10.96.0.1:443"), false); err == nil {
		t.Error("a listing that is no JSON gave no error")
	}
}
