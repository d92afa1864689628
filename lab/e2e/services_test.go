//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kubectl-nettrace/nettrace/lab"
	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

func serviceIP(t *testing.T, namespace, name string) string {
	t.Helper()
	s, err := clientset(t).CoreV1().Services(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Spec.ClusterIP
}

// Seed §6: a ClusterIP reaches nginx, by name through the cluster DNS and by
// address.
func TestClusterIPByNameAndAddress(t *testing.T) { checkClusterIPByNameAndAddress(t) }

func checkClusterIPByNameAndAddress(t *testing.T) {
	for _, target := range []string{"nginx-test", serviceIP(t, "default", "nginx-test")} {
		out := eventually(t, 20*time.Second, "Welcome to nginx!", "client", "curl", "-s", "-m", "5", target)
		if !strings.Contains(out, "Welcome to nginx!") {
			t.Errorf("curl %s from the client:\n%s", target, out)
		}
	}
}

// Seed §6: whoami behind a ClusterIP shows the pod IP: the destination was
// DNATed.
func TestClusterIPIsDNATedToThePod(t *testing.T) { checkClusterIPIsDNATedToThePod(t) }

func checkClusterIPIsDNATedToThePod(t *testing.T) {
	want := "IP: " + podIP(t, "clusterip-dnat")
	out := eventually(t, 20*time.Second, want, "client", "curl", "-s", "-m", "5", serviceIP(t, "default", "clusterip-dnat"))
	if !strings.Contains(out, want) {
		t.Fatalf("whoami through the ClusterIP does not show %q:\n%s", want, out)
	}
	if want := "RemoteAddr: " + podIP(t, "client") + ":"; !strings.Contains(out, want) {
		t.Errorf("a pod on the same node should keep its source address (%q):\n%s", want, out)
	}
}

// Seed §7: NodePort 31010 answers on every node, also those without the
// pod; the source is SNATed to an address of the node the request entered.
func TestNodePortFromOutsideOnEveryNode(t *testing.T) { checkNodePortFromOutsideOnEveryNode(t) }

func checkNodePortFromOutsideOnEveryNode(t *testing.T) {
	remote := regexp.MustCompile(`RemoteAddr: ([0-9.]+):`)
	for node, ip := range map[string]string{"k8s-m": "192.168.10.10", "k8s-w1": "192.168.10.101", "k8s-w2": "192.168.10.102"} {
		// The service proxy programs new services within a second or two
		// of their creation: give it that.
		out := eventually(t, 20*time.Second, "Hostname: nodeport-dnat", "external", "curl", "-s", "-m", "5", ip+":31010")
		if !strings.Contains(out, "Hostname: nodeport-dnat") {
			t.Errorf("curl %s:31010 from outside:\n%s", ip, out)
			continue
		}
		m := remote.FindStringSubmatch(out)
		if m == nil {
			t.Errorf("no RemoteAddr in:\n%s", out)
			continue
		}
		addrs := labExec(t, "node/"+node, "ip", "-4", "-o", "addr")
		if !strings.Contains(addrs, " "+m[1]+"/") {
			t.Errorf("through %s the source %s is not one of the node's addresses (SNAT expected):\n%s", node, m[1], addrs)
		}
		if m[1] == "192.168.10.1" {
			t.Errorf("through %s the client's own address arrived: no SNAT", node)
		}
	}
}

// Seed §8: the cluster DNS answers for services, pods, SRV, headless and
// external names, and forwards the rest upstream.
func TestClusterDNSRecords(t *testing.T) {
	kubectlApply(t, `apiVersion: v1
kind: Service
metadata:
  name: headless-test
spec:
  clusterIP: None
  selector:
    app: nginx-test
  ports:
    - {name: http, port: 80}
`)
	kubectl(t, "create", "service", "externalname", "external-test", "--external-name=example.com")
	t.Cleanup(func() { kubectl(t, "delete", "service", "headless-test", "external-test") })
	dig := func(args ...string) string {
		return labExec(t, "client", append([]string{"dig", "+short"}, args...)...)
	}
	if got, want := strings.TrimSpace(dig("nginx-test.default.svc.cluster.local")), serviceIP(t, "default", "nginx-test"); got != want {
		t.Errorf("A nginx-test: %q, want %q", got, want)
	}
	pod := podIP(t, "coredns-example")
	if got := strings.TrimSpace(dig(strings.ReplaceAll(pod, ".", "-") + ".default.pod.cluster.local")); got != pod {
		t.Errorf("pod A record: %q, want %q", got, pod)
	}
	if got := dig("SRV", "_dns._udp.kube-dns.kube-system.svc.cluster.local"); !strings.Contains(got, "53 kube-dns.kube-system.svc.cluster.local.") {
		t.Errorf("SRV _dns._udp.kube-dns: %q", got)
	}
	if got := dig("external-test.default.svc.cluster.local"); !strings.Contains(got, "example.com.") {
		t.Errorf("ExternalName CNAME: %q", got)
	}
	if got := strings.TrimSpace(dig("google.com")); got != "203.0.113.100" {
		t.Errorf("google.com through the upstream: %q", got)
	}
	ptr := dig("-x", serviceIP(t, "default", "nginx-test"))
	if !strings.Contains(ptr, "nginx-test.default.svc.cluster.local.") {
		t.Errorf("PTR of nginx-test's ClusterIP: %q", ptr)
	}
	out, err := exec.Command(bin("nettrace-lab"), "exec", "client", "--", "dig", "no-such-service.default.svc.cluster.local").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "NXDOMAIN") {
		t.Errorf("an unknown service name: %v\n%s", err, out)
	}
	// Headless: one A record per ready endpoint, here the nginx-test pods.
	pods, err := clientset(t).CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=nginx-test"})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, p := range pods.Items {
		want = append(want, p.Status.PodIP)
	}
	sort.Strings(want)
	var got []string
	_ = wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		got = strings.Fields(dig("headless-test.default.svc.cluster.local"))
		sort.Strings(got)
		return strings.Join(got, " ") == strings.Join(want, " "), nil
	})
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("headless A records: %v, want %v", got, want)
	}
}

// eventually runs a command in target until its output holds want, for up
// to timeout, and returns the last output.
func eventually(t *testing.T, timeout time.Duration, want, target string, argv ...string) string {
	t.Helper()
	var out string
	deadline := time.Now().Add(timeout)
	for {
		b, _ := exec.Command(bin("nettrace-lab"), append([]string{"exec", target, "--"}, argv...)...).CombinedOutput()
		out = string(b)
		if strings.Contains(out, want) || time.Now().After(deadline) {
			return out
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// kubectlApply applies a manifest given as text.
func kubectlApply(t *testing.T, manifest string) {
	t.Helper()
	cmd := exec.Command(bin("nettrace-lab"), "kubectl", "--", "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// Seed §8: with the DNS pods stopped, every name lookup fails.
func TestNameLookupsFailWithoutClusterDNS(t *testing.T) {
	kubectl(t, "-n", "kube-system", "scale", "deployment/coredns", "--replicas=0")
	t.Cleanup(func() {
		kubectl(t, "-n", "kube-system", "scale", "deployment/coredns", "--replicas=2")
		kubectl(t, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=90s")
	})
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		out, _ := exec.Command(bin("nettrace-lab"), "kubectl", "--", "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "name").Output()
		return strings.TrimSpace(string(out)) == "", nil
	})
	if err != nil {
		t.Fatal("the DNS pods did not go away")
	}
	out, err := exec.Command(bin("nettrace-lab"), "exec", "client", "--", "ping", "-c", "1", "-W", "2", "google.com").CombinedOutput()
	if err == nil {
		t.Fatalf("ping google.com worked without the cluster DNS:\n%s", out)
	}
	if !strings.Contains(string(out), "google.com") {
		t.Errorf("ping's error does not name the lookup: %s", out)
	}
	fmt.Fprintf(testWriter{t}, "without DNS: %s", out)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Seed §7: on-prem, a LoadBalancer service gets an address from the
// underlay pool; one node answers ARP for it, and the outside world reaches
// the service there.
func TestLoadBalancerFromOutside(t *testing.T) { checkLoadBalancerFromOutside(t) }

// The announcer's node daemon is killed while its node stays Ready: its
// speaker's Lease expires and another node answers ARP for the address,
// which stays reachable from outside. A second `up` restarts the daemon.
func TestLoadBalancerSurvivesAKilledSpeaker(t *testing.T) {
	lbIP, owner := checkLoadBalancerFromOutside(t)
	if owner == "" {
		t.Fatal("no announcer to kill")
	}
	macOf := map[string]string{}
	for _, node := range []string{"k8s-m", "k8s-w1", "k8s-w2"} {
		link := strings.Fields(labExec(t, "node/"+node, "ip", "-br", "link", "show", "eth0"))
		macOf[node] = link[2]
	}
	pid, ok := proc.Running(filepath.Join(lab.DefaultStateDir, "run"), owner+"-nettrace-node")
	if !ok {
		t.Fatalf("the node daemon of %s is not running", owner)
	}
	t.Cleanup(func() {
		run(t, bin("nettrace-lab"), "up", "--with-examples")
		// The restarted daemon answers for the address again: the tests after
		// this one find the lab as it was.
		eventually(t, 20*time.Second, "Welcome to nginx!", "external", "curl", "-s", "-m", "2", lbIP)
	})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// The outside world keeps asking (curl) until another node's MAC answers.
	var neigh, successor string
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		exec.Command(bin("nettrace-lab"), "exec", "external", "--", "curl", "-s", "-m", "1", "-o", "/dev/null", lbIP).Run()
		neigh = labExec(t, "external", "ip", "neigh", "show", lbIP)
		for node, mac := range macOf {
			if node != owner && strings.Contains(neigh, "lladdr "+mac) {
				successor = node
			}
		}
		return successor != "", nil
	})
	if err != nil {
		t.Fatalf("no other node answers ARP for %s 30 s after the node daemon of %s was killed: %s", lbIP, owner, neigh)
	}
	t.Logf("%s moved from %s to %s %s after the node daemon was killed", lbIP, owner, successor, time.Since(killed).Round(100*time.Millisecond))
	if out := eventually(t, 20*time.Second, "Welcome to nginx!", "external", "curl", "-s", "-m", "3", lbIP); !strings.Contains(out, "Welcome to nginx!") {
		t.Errorf("curl %s from outside after the failover:\n%s", lbIP, out)
	}
}

// checkLoadBalancerFromOutside checks that nginx-lb answers from the
// outside world at its address, and returns the address and the node whose
// MAC the outside world's ARP entry holds.
func checkLoadBalancerFromOutside(t *testing.T) (lbIP, owner string) {
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		s, err := clientset(t).CoreV1().Services("default").Get(ctx, "nginx-lb", metav1.GetOptions{})
		if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
			return false, nil
		}
		lbIP = s.Status.LoadBalancer.Ingress[0].IP
		return true, nil
	})
	if err != nil {
		t.Fatal("nginx-lb got no LoadBalancer address")
	}
	if !strings.HasPrefix(lbIP, "192.168.10.20") {
		t.Errorf("nginx-lb got %s, outside the lab's pool 192.168.10.200/29", lbIP)
	}
	out := eventually(t, 20*time.Second, "Welcome to nginx!", "external", "curl", "-s", "-m", "5", lbIP)
	if !strings.Contains(out, "Welcome to nginx!") {
		t.Fatalf("curl %s from outside:\n%s", lbIP, out)
	}
	neigh := labExec(t, "external", "ip", "neigh", "show", lbIP)
	macs := map[string]string{}
	for _, node := range []string{"k8s-m", "k8s-w1", "k8s-w2"} {
		// ip, not /sys: nsenter keeps the host's /sys mount.
		link := strings.Fields(labExec(t, "node/"+node, "ip", "-br", "link", "show", "eth0"))
		if len(link) >= 3 {
			macs[link[2]] = node
		}
	}
	for mac, node := range macs {
		if strings.Contains(neigh, mac) {
			owner = node
		}
	}
	if owner == "" {
		t.Errorf("the outside world's ARP entry for %s is no node's eth0: %s (nodes: %v)", lbIP, neigh, macs)
	}
	t.Logf("%s is announced by %s", lbIP, owner)
	return lbIP, owner
}
