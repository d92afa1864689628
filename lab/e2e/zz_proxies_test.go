//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestKubeProxyModes brings the lab up again with the real kube-proxy, in
// iptables and then nftables mode, instead of the reference service NAT, and
// runs the service checks against it. It runs last (file order): it replaces
// the lab every other test used.
func TestKubeProxyModes(t *testing.T) {
	if os.Getenv("NETTRACE_E2E_REUSE") == "1" {
		t.Skip("NETTRACE_E2E_REUSE keeps the running lab: the kube-proxy modes need their own")
	}
	for _, mode := range []struct{ proxy, chainsIn string }{
		{"kube-proxy-iptables", "iptables-nft-save"},
		{"kube-proxy-nftables", "nft list table ip kube-proxy"},
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
			t.Run("LoadBalancer", checkLoadBalancerFromOutside)
		})
	}
}
