//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// TestKubeProxyModes brings the lab up again with the real kube-proxy, in
// iptables and then nftables mode, instead of the reference service NAT, and
// runs the service checks against it. It runs last (file order): it replaces
// the lab every other test used.
func TestKubeProxyModes(t *testing.T) {
	if os.Getenv("NETTRACE_E2E_REUSE") == "1" {
		t.Skip("NETTRACE_E2E_REUSE keeps the running lab: the kube-proxy modes need their own")
	}
	for _, mode := range []struct{ proxy, chainsIn, table, svcChain, sepChain string }{
		{"kube-proxy-iptables", "iptables-nft-save", "nat", "KUBE-SVC-", "KUBE-SEP-"},
		// kube-proxy 1.37's nftables mode DNATs in the service chain itself
		// (dnat to numgen random mod N map {...}) when no endpoint needs
		// its own chain: there is no endpoint chain on this path.
		{"kube-proxy-nftables", "nft list table ip kube-proxy", "kube-proxy", "service-", ""},
	} {
		t.Run(mode.proxy, func(t *testing.T) {
			run(t, bin("nettrace-lab"), "down")
			run(t, bin("nettrace-lab"), "up", "--with-examples", "--service-proxy="+mode.proxy)
			t.Run("rules are kube-proxy's", func(t *testing.T) {
				argv := append([]string{bin("nettrace-lab"), "exec", "node/k8s-w1", "--"}, strings.Fields(mode.chainsIn)...)
				out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
				if err != nil || !strings.Contains(string(out), "default/nginx-test") {
					t.Fatalf("%s on k8s-w1 shows no kube-proxy rules for nginx-test: %v\n%s", mode.chainsIn, err, out)
				}
			})
			t.Run("ClusterIP", checkClusterIPByNameAndAddress)
			t.Run("DNAT", checkClusterIPIsDNATedToThePod)
			t.Run("NodePort", checkNodePortFromOutsideOnEveryNode)
			t.Run("LoadBalancer", func(t *testing.T) { checkLoadBalancerFromOutside(t) })
			t.Run("trace names kube-proxy's chains", func(t *testing.T) {
				checkTraceThroughKubeProxy(t, mode.table, mode.svcChain, mode.sepChain)
			})
		})
	}
}

// checkTraceThroughKubeProxy traces client → svc/nginx-test with the
// plugin's binary and checks that the hops name the real kube-proxy's
// service and endpoint chains, the DNAT, and that the reply came back.
func checkTraceThroughKubeProxy(t *testing.T, table, svcChain, sepChain string) {
	out := run(t, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t), "client", "svc/nginx-test", "-o", "json")
	var path trace.Path
	if err := json.Unmarshal([]byte(out), &path); err != nil {
		t.Fatalf("the trace's JSON: %v\n%s", err, out)
	}
	if path.Verdict.Result != trace.Replied {
		t.Errorf("verdict %s (%s), want replied", path.Verdict.Result, path.Verdict.Reason)
	}
	var svc, dnat bool
	sep := sepChain == ""
	for _, h := range path.Hops {
		if h.Rule != nil && h.Rule.Table == table {
			svc = svc || strings.HasPrefix(h.Rule.Chain, svcChain)
			sep = sep || (sepChain != "" && strings.HasPrefix(h.Rule.Chain, sepChain))
		}
		dnat = dnat || (h.NAT != nil && h.NAT.Type == "DNAT")
	}
	if !svc || !sep || !dnat {
		t.Errorf("the trace lacks kube-proxy's %s %s… (%t) or %s… (%t) chains, or the DNAT (%t):\n%s", table, svcChain, svc, sepChain, sep, dnat, out)
	}
}
