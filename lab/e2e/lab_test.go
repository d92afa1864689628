//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

var (
	podPool  = netip.MustParsePrefix("172.16.0.0/16")
	underlay = netip.MustParsePrefix("192.168.10.0/24")
)

func TestLabUpTime(t *testing.T) {
	t.Logf("nettrace-lab up --with-examples: every example pod Running after %.1fs (target: under 60s with cached binaries)", upDuration.Seconds())
	if upDuration == 0 {
		t.Fatal("the lab's start was not measured")
	}
}

func TestNodesAreReadyWithTheSeedsNamesAndAddresses(t *testing.T) {
	nodes, err := clientset(t).CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"k8s-m": "192.168.10.10", "k8s-w1": "192.168.10.101", "k8s-w2": "192.168.10.102"}
	if len(nodes.Items) != len(want) {
		t.Fatalf("got %d nodes, want %d", len(nodes.Items), len(want))
	}
	for _, n := range nodes.Items {
		ip, ok := want[n.Name]
		if !ok {
			t.Errorf("unexpected node %s", n.Name)
			continue
		}
		var internal string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = a.Address
			}
		}
		if internal != ip {
			t.Errorf("node %s has InternalIP %q, want %s", n.Name, internal, ip)
		}
		if !nodeReady(&n) {
			t.Errorf("node %s is not Ready", n.Name)
		}
	}
	out := kubectl(t, "get", "nodes")
	if !strings.Contains(out, "control-plane") {
		t.Errorf("k8s-m has no control-plane role:\n%s", out)
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func TestExamplePodsRunWithPoolAddressesOnUnderlayHosts(t *testing.T) {
	pods, err := clientset(t).CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range pods.Items {
		names[p.Name] = true
		if p.Status.Phase != corev1.PodRunning {
			t.Errorf("pod %s/%s is %s", p.Namespace, p.Name, p.Status.Phase)
		}
		podIP, err1 := netip.ParseAddr(p.Status.PodIP)
		hostIP, err2 := netip.ParseAddr(p.Status.HostIP)
		if err1 != nil || !podPool.Contains(podIP) {
			t.Errorf("pod %s/%s has IP %q, not from the pool %s", p.Namespace, p.Name, p.Status.PodIP, podPool)
		}
		if err2 != nil || !underlay.Contains(hostIP) {
			t.Errorf("pod %s/%s has hostIP %q, not on the underlay %s", p.Namespace, p.Name, p.Status.HostIP, underlay)
		}
	}
	for _, want := range []string{"pod1", "server", "client", "server-w2", "clusterip-dnat", "nodeport-dnat", "coredns-example"} {
		if !names[want] {
			t.Errorf("example pod %s is missing", want)
		}
	}
}

// Seed §4: containers of a pod share its netns and reach each other on 127.0.0.1.
func TestContainersOfAPodShareLoopback(t *testing.T) {
	out := run(t, bin("nettrace-lab"), "exec", "pod1", "-c", "netshoot", "--", "curl", "-s", "-m", "5", "127.0.0.1:80")
	if !strings.Contains(out, "<title>Welcome to nginx!</title>") {
		t.Fatalf("curl 127.0.0.1:80 from pod1's netshoot container:\n%s", out)
	}
	host := run(t, bin("nettrace-lab"), "exec", "pod1", "-c", "netshoot", "--", "hostname")
	if strings.TrimSpace(host) != "pod1" {
		t.Errorf("hostname in pod1 is %q, want pod1", host)
	}
}

func TestDeploymentScalesThroughTheRealControllers(t *testing.T) {
	kubectl(t, "create", "deployment", "scale-test", "--image=nginx", "--replicas=3")
	t.Cleanup(func() { kubectl(t, "delete", "deployment", "scale-test", "--wait=true") })
	for _, replicas := range []int{3, 5, 1} {
		kubectl(t, "scale", "deployment/scale-test", fmt.Sprintf("--replicas=%d", replicas))
		waitPods(t, "app=scale-test", replicas)
	}
}

// waitPods waits until exactly n pods match selector, all Running and Ready.
func waitPods(t *testing.T, selector string, n int) {
	t.Helper()
	cs := clientset(t)
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && podReady(&p) {
				ready++
			}
		}
		last = fmt.Sprintf("%d pods, %d ready", len(pods.Items), ready)
		return len(pods.Items) == n && ready == n, nil
	})
	if err != nil {
		t.Fatalf("waiting for %d ready pods with %s: %v (last: %s)", n, selector, err, last)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func TestUnknownImageIsAnErrorOnThePod(t *testing.T) {
	kubectl(t, "run", "unknown-image", "--image=example.com/not-in-the-lab:1.0", "--restart=Never")
	t.Cleanup(func() { kubectl(t, "delete", "pod", "unknown-image", "--wait=true") })
	cs := clientset(t)
	var reason, message string
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "unknown-image", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil {
			return false, nil
		}
		w := p.Status.ContainerStatuses[0].State.Waiting
		reason, message = w.Reason, w.Message
		return reason == "ErrImagePull", nil
	})
	if err != nil {
		t.Fatalf("the pod's container is not waiting in ErrImagePull (reason %q, message %q)", reason, message)
	}
	if !strings.Contains(message, "not-in-the-lab") || !strings.Contains(message, "nginx") {
		t.Errorf("the message does not name the image and the images the lab knows: %q", message)
	}
}

func TestExecIntoNodesAndTheOutsideWorld(t *testing.T) {
	routes := labExec(t, "node/k8s-w1", "ip", "route")
	for _, want := range []string{"default via 192.168.10.1 dev eth0", "proto bird", "dev cali", "dev tunl0"} {
		if !strings.Contains(routes, want) {
			t.Errorf("ip route on k8s-w1 lacks %q:\n%s", want, routes)
		}
	}
	if out := labExec(t, "external", "ip", "-br", "addr"); !strings.Contains(out, "192.168.10.1/24") {
		t.Errorf("the outside world does not hold the gateway address:\n%s", out)
	}
	cmd := exec.Command(bin("nettrace-lab"), "exec", "node/k8s-w9", "--", "true")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no node "k8s-w9"`) {
		t.Errorf("exec on an unknown node: err %v, output %q", err, out)
	}
	cmd = exec.Command(bin("nettrace-lab"), "exec", "no-such-pod", "--", "true")
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `pod "no-such-pod" not found`) {
		t.Errorf("exec in an unknown pod: err %v, output %q", err, out)
	}
}

func TestUpAgainKeepsTheRunningLab(t *testing.T) {
	before := podUIDs(t)
	run(t, bin("nettrace-lab"), "up")
	after := podUIDs(t)
	for name, uid := range before {
		if after[name] != uid {
			t.Errorf("pod %s was replaced by a second up", name)
		}
	}
	if out := run(t, bin("nettrace-lab"), "status"); strings.Contains(out, "stopped") {
		t.Errorf("status after a second up:\n%s", out)
	}
}

func podUIDs(t *testing.T) map[string]string {
	pods, err := clientset(t).CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		out[p.Name] = string(p.UID)
	}
	return out
}
