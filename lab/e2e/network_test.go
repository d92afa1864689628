//go:build e2e

package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podIP returns the IP of a pod in the default namespace.
func podIP(t *testing.T, name string) string {
	t.Helper()
	p, err := clientset(t).CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

// Seed §5: a pod's gateway 169.254.1.1 is answered by the host's proxy ARP
// with ee:ee:ee:ee:ee:ee, and pods on one node reach each other.
func TestSameNodePodsThroughProxyARP(t *testing.T) {
	labExec(t, "client", "ip", "neigh", "flush", "all")
	labExec(t, "client", "ping", "-c", "2", "-W", "2", podIP(t, "server"))
	neigh := labExec(t, "client", "ip", "neigh", "show", "169.254.1.1")
	if !strings.Contains(neigh, "ee:ee:ee:ee:ee:ee") {
		t.Fatalf("169.254.1.1 is not resolved to ee:ee:ee:ee:ee:ee in the client:\n%s", neigh)
	}
	routes := labExec(t, "client", "ip", "route")
	for _, want := range []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"} {
		if !strings.Contains(routes, want) {
			t.Errorf("the client's routes lack %q:\n%s", want, routes)
		}
	}
}

// Seed §5: the node has a /32 route per local pod through its cali veth and
// a blackhole for its own block.
func TestNodeRoutesLikeCalico(t *testing.T) {
	routes := labExec(t, "node/k8s-w1", "ip", "route")
	server := regexp.QuoteMeta(podIP(t, "server"))
	for _, re := range []string{
		`(?m)^blackhole 172\.16\.\d+\.0/24 proto bird`,
		`(?m)^` + server + ` dev cali[0-9a-f]{11} scope link`,
		`(?m)^172\.16\.\d+\.0/24 via 192\.168\.10\.102 dev tunl0 proto bird onlink`,
	} {
		if !regexp.MustCompile(re).MatchString(routes) {
			t.Errorf("ip route on k8s-w1 has no line matching %s:\n%s", re, routes)
		}
	}
}

// Seed §6: pods on different nodes talk through tunl0; on k8s-w1's eth0 the
// packets are IPIP: outer node→node, protocol 4, inner pod→pod.
func TestCrossNodePodsOverIPIP(t *testing.T) {
	target := podIP(t, "server-w2")
	client := podIP(t, "client")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dump := exec.CommandContext(ctx, bin("nettrace-lab"), "exec", "node/k8s-w1", "--",
		"tcpdump", "-l", "-nn", "-v", "-c", "2", "-i", "eth0", "ip proto 4 and host 192.168.10.102")
	var out strings.Builder
	dump.Stdout, dump.Stderr = &out, &out
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // tcpdump attaches
	labExec(t, "client", "ping", "-c", "3", "-W", "2", target)
	if err := dump.Wait(); err != nil {
		t.Fatalf("tcpdump on k8s-w1 eth0: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{"proto IPIP (4)", "192.168.10.101 > 192.168.10.102:", client + " > " + target + ": ICMP echo request"} {
		if !strings.Contains(text, want) {
			t.Errorf("the capture on k8s-w1 eth0 lacks %q:\n%s", want, text)
		}
	}
	// TCP across nodes too: an nginx of nginx-test runs on k8s-w2.
	pods, err := clientset(t).CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=nginx-test", FieldSelector: "spec.nodeName=k8s-w2"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("no nginx-test pod on k8s-w2 (%v)", err)
	}
	page := labExec(t, "client", "curl", "-s", "-m", "5", pods.Items[0].Status.PodIP)
	if !strings.Contains(page, "Welcome to nginx!") {
		t.Errorf("TCP from the client to %s on k8s-w2:\n%s", pods.Items[0].Status.PodIP, page)
	}
}
