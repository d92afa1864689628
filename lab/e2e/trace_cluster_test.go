//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/lab"
	"github.com/kubectl-nettrace/nettrace/lab/pki"
	"github.com/kubectl-nettrace/nettrace/lab/proc"
	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
	"github.com/kubectl-nettrace/nettrace/trace/render"
)

// traceNodes are the lab's nodes, each with an agent during these tests.
var traceNodes = []string{"k8s-m", "k8s-w1", "k8s-w2"}

// traceAgent is the nettrace agent of one lab node: the lab's own when it
// runs one (the pid file run/NODE-nettrace-agent), else one the test
// started, authenticated as the user nettrace-agent.
type traceAgent struct {
	node string
	pid  int
	argv []string
	// owned: the test started it, and stops it when it ends.
	owned bool
	log   string
	// logFrom is where the log of the latest start begins.
	logFrom int
}

// traceSetup applies the NetTrace CRD and the agents' RBAC (the lab may
// have done so already) and makes sure an agent runs on every node.
func traceSetup(t *testing.T) map[string]*traceAgent {
	t.Helper()
	kubectl(t, "apply", "--server-side", "--force-conflicts",
		"-f", filepath.Join(repoRoot, "deploy", "crds", "nettrace.yaml"),
		"-f", filepath.Join(repoRoot, "deploy", "agent", "rbac.yaml"))
	kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/nettraces.nettrace.dev")
	agents := map[string]*traceAgent{}
	runDir := filepath.Join(lab.DefaultStateDir, "run")
	for _, node := range traceNodes {
		if pid, ok := proc.Running(runDir, node+"-nettrace-agent"); ok {
			agents[node] = &traceAgent{node: node, pid: pid, argv: cmdline(t, pid),
				log: filepath.Join(lab.DefaultStateDir, "nodes", node, "log", "nettrace-agent.log")}
			continue
		}
		a := &traceAgent{node: node, owned: true, log: filepath.Join(t.TempDir(), node+"-agent.log"),
			argv: []string{bin("nettrace-agent"), "--node", node, "--node-ip", nodeIP(t, node),
				"--kubeconfig", agentKubeconfig(t, node)}}
		a.start(t)
		t.Cleanup(func() { proc.Kill([]int{a.pid}, 10*time.Second) })
		agents[node] = a
	}
	waitAgentsWatching(t, agents)
	return agents
}

// start starts the agent in its node's network namespace, as the lab does.
func (a *traceAgent) start(t *testing.T) {
	t.Helper()
	runDir := filepath.Join(lab.DefaultStateDir, "run")
	name := a.node + "-nettrace-agent"
	if a.owned {
		runDir, name = t.TempDir(), "e2e-"+name
	}
	b, _ := os.ReadFile(a.log)
	a.logFrom = len(b)
	pid, err := proc.Start(runDir, proc.Spec{Name: name, Netns: "nettrace-" + a.node, Argv: a.argv, Log: a.log,
		Detach: !a.owned})
	if err != nil {
		t.Fatal(err)
	}
	a.pid = pid
}

// waitAgentsWatching waits until the log of each agent the test started
// says it watches.
func waitAgentsWatching(t *testing.T, agents map[string]*traceAgent) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range agents {
		for a.owned {
			b, _ := os.ReadFile(a.log)
			if len(b) >= a.logFrom && bytes.Contains(b[a.logFrom:], []byte("watching NetTraces")) {
				break
			}
			if time.Now().After(deadline) || !proc.Alive(a.pid) {
				t.Fatalf("the agent of %s does not watch NetTraces:\n%s", a.node, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// cmdline reads a process's argv.
func cmdline(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// nodeIP is a node's internal address.
func nodeIP(t *testing.T, node string) string {
	t.Helper()
	n, err := clientset(t).CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	t.Fatalf("node %s has no internal IP", node)
	return ""
}

// agentKubeconfig issues a client certificate for the user nettrace-agent,
// as the lab does for its agents, and returns a kubeconfig with it.
func agentKubeconfig(t *testing.T, node string) string {
	t.Helper()
	admin, err := clientcmd.LoadFromFile(labKubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	server := admin.Clusters[admin.Contexts[admin.CurrentContext].Cluster].Server
	ca, err := pki.LoadOrCreateCA(filepath.Join(lab.DefaultStateDir, "controlplane", "pki"))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(pki.Request{Name: "e2e-" + node + "-nettrace-agent", CommonName: "nettrace-agent"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), node+"-nettrace-agent.kubeconfig")
	if err := ca.WriteKubeconfig(path, server, "nettrace-agent", pair); err != nil {
		t.Fatal(err)
	}
	return path
}

// adminConfig is the lab's cluster-admin client configuration.
func adminConfig(t *testing.T) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", labKubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// clusterTrace runs `kubectl nettrace client TARGET` with cfg's rights,
// after flushing the client's neighbour cache so that its ARP shows.
func clusterTrace(t *testing.T, cfg *rest.Config, target string, opts cluster.Options) (*trace.Path, error) {
	t.Helper()
	labExec(t, "client", "ip", "neigh", "flush", "all")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts.Kube, opts.Dynamic = kubernetes.NewForConfigOrDie(cfg), dynamic.NewForConfigOrDie(cfg)
	opts.Namespace, opts.Source, opts.Target = "default", "client", target
	path, err := cluster.Run(ctx, opts)
	if path != nil {
		var out strings.Builder
		_ = render.Render(&out, *path, render.Table, render.Options{})
		t.Logf("kubectl nettrace client %s:\n%s", target, out.String())
	}
	return path, err
}

// hasHop reports whether the path has a hop that match accepts.
func hasHop(p *trace.Path, match func(trace.Hop) bool) bool {
	return slices.ContainsFunc(p.Hops, match)
}

// ruleChain accepts a rule hop whose chain starts with prefix.
func ruleChain(prefix string) func(trace.Hop) bool {
	return func(h trace.Hop) bool { return h.Rule != nil && strings.HasPrefix(h.Rule.Chain, prefix) }
}

// proxyARP accepts the proxy ARP reply for the pod gateway.
func proxyARP(h trace.Hop) bool {
	return h.ARP != nil && h.ARP.Proxy && h.ARP.SenderMAC == "ee:ee:ee:ee:ee:ee"
}

// deliveredTo accepts the delivery to a pod whose name starts with prefix.
func deliveredTo(prefix string) func(trace.Hop) bool {
	return func(h trace.Hop) bool {
		return h.Kind == trace.HopDeliver && strings.HasPrefix(h.Note, "delivered to default/"+prefix)
	}
}

// dnatTo accepts a DNAT to an address of the given pods.
func dnatTo(ips ...string) func(trace.Hop) bool {
	return func(h trace.Hop) bool {
		return h.NAT != nil && h.NAT.Type == "DNAT" && slices.Contains(ips, h.NAT.To.Addr().String())
	}
}

// endpointIPs lists the addresses of a service's endpoints.
func endpointIPs(t *testing.T, service string) []string {
	t.Helper()
	out := kubectl(t, "get", "endpointslices", "-l", "kubernetes.io/service-name="+service,
		"-o", "jsonpath={.items[*].endpoints[*].addresses[0]}")
	return strings.Fields(out)
}

func TestTraceServiceAcrossTheCluster(t *testing.T) {
	traceSetup(t)
	path, err := clusterTrace(t, adminConfig(t), "svc/nginx-test", cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if path.Verdict.Result != trace.Replied {
		t.Errorf("verdict %+v, want replied", path.Verdict)
	}
	for what, match := range map[string]func(trace.Hop) bool{
		"the service's KUBE-SVC chain":        ruleChain("KUBE-SVC-"),
		"the endpoint's KUBE-SEP chain":       ruleChain("KUBE-SEP-"),
		"the DNAT to an endpoint":             dnatTo(endpointIPs(t, "nginx-test")...),
		"the proxy ARP of the pod's gateway":  proxyARP,
		"the delivery to a nginx-test pod":    deliveredTo("nginx-test-"),
		"the SYN-ACK back in the client's ns": func(h trace.Hop) bool { return h.Direction == trace.Reply && h.Netns == "default/client" },
	} {
		if !hasHop(path, match) {
			t.Errorf("the path misses %s", what)
		}
	}
}

func TestTraceClusterIPDNAT(t *testing.T) {
	traceSetup(t)
	path, err := clusterTrace(t, adminConfig(t), "clusterip-dnat", cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if path.Verdict.Result != trace.Replied {
		t.Errorf("verdict %+v, want replied", path.Verdict)
	}
	if !hasHop(path, dnatTo(podIP(t, "clusterip-dnat"))) || !hasHop(path, deliveredTo("clusterip-dnat")) {
		t.Error("the path misses the DNAT to the clusterip-dnat pod, or its delivery")
	}
	if !hasHop(path, func(h trace.Hop) bool {
		return h.Rule != nil && strings.Contains(h.Rule.Text, "default/clusterip-dnat")
	}) {
		t.Error("no rule hop names default/clusterip-dnat")
	}
}

func TestTraceSameNodePod(t *testing.T) {
	traceSetup(t)
	path, err := clusterTrace(t, adminConfig(t), "pod/server", cluster.Options{Proto: "icmp"})
	if err != nil {
		t.Fatal(err)
	}
	if path.Verdict.Result != trace.Replied || !slices.Equal(path.Nodes, []string{"k8s-w1"}) {
		t.Errorf("verdict %+v on %v, want replied on k8s-w1 alone", path.Verdict, path.Nodes)
	}
	for what, match := range map[string]func(trace.Hop) bool{
		"the proxy ARP of the pod's gateway": proxyARP,
		"the FORWARD chain":                  ruleChain("FORWARD"),
		"Calico's cali-FORWARD chain":        ruleChain("cali-FORWARD"),
		"the delivery to default/server":     deliveredTo("server"),
	} {
		if !hasHop(path, match) {
			t.Errorf("the path misses %s", what)
		}
	}
}

func TestTraceCrossNodePodOverIPIP(t *testing.T) {
	traceSetup(t)
	path, err := clusterTrace(t, adminConfig(t), "pod/server-w2", cluster.Options{Proto: "icmp"})
	if err != nil {
		t.Fatal(err)
	}
	if path.Verdict.Result != trace.Replied || !slices.Equal(path.Nodes, []string{"k8s-w1", "k8s-w2"}) {
		t.Errorf("verdict %+v on %v, want replied across k8s-w1 and k8s-w2", path.Verdict, path.Nodes)
	}
	tunnel := func(kind trace.HopKind, node string, dir trace.Direction) func(trace.Hop) bool {
		return func(h trace.Hop) bool {
			return h.Kind == kind && h.Node == node && h.Direction == dir && h.Tunnel != nil && h.Tunnel.Type == "ipip"
		}
	}
	for what, match := range map[string]func(trace.Hop) bool{
		"the request wrapped on k8s-w1":   tunnel(trace.HopEncap, "k8s-w1", trace.Request),
		"the request unwrapped on k8s-w2": tunnel(trace.HopDecap, "k8s-w2", trace.Request),
		"the reply wrapped on k8s-w2":     tunnel(trace.HopEncap, "k8s-w2", trace.Reply),
		"the reply unwrapped on k8s-w1":   tunnel(trace.HopDecap, "k8s-w1", trace.Reply),
		"the delivery to default/server-w2": func(h trace.Hop) bool {
			return deliveredTo("server-w2")(h) && h.Node == "k8s-w2"
		},
		"a rule hop on k8s-w2": func(h trace.Hop) bool { return h.Rule != nil && h.Node == "k8s-w2" },
		"the proxy ARP":        proxyARP,
	} {
		if !hasHop(path, match) {
			t.Errorf("the path misses %s", what)
		}
	}
}

func TestTraceServiceWithoutEndpointsShowsTheRejection(t *testing.T) {
	traceSetup(t)
	kubectl(t, "create", "service", "clusterip", "trace-e2e-noep", "--tcp=80:80")
	t.Cleanup(func() { kubectl(t, "delete", "service", "trace-e2e-noep", "--ignore-not-found") })
	var path *trace.Path
	var err error
	// The service NAT learns of the service a moment after it is created.
	for range 20 {
		path, err = clusterTrace(t, adminConfig(t), "trace-e2e-noep", cluster.Options{})
		if err != nil || strings.Contains(path.Verdict.Reason, "no endpoints") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	v := path.Verdict
	if v.Result != trace.Dropped || v.Node != "k8s-w1" || !strings.Contains(v.Where, "REJECT") ||
		!strings.Contains(v.Reason, "default/trace-e2e-noep") || !strings.Contains(v.Reason, "no endpoints") {
		t.Fatalf("verdict %+v, want dropped by the REJECT rule of the service without endpoints on k8s-w1", v)
	}
}

func TestTraceForbiddenAndAllowedUsers(t *testing.T) {
	traceSetup(t)
	cs := clientset(t)
	ctx := context.Background()
	kubectl(t, "apply", "-n", "default", "-f", filepath.Join(repoRoot, "deploy", "rbac-user.yaml"))
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "trace-e2e-tracer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "nettrace-user"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "trace-e2e-tracer"}},
	}
	if _, err := cs.RbacV1().RoleBindings("default").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.RbacV1().RoleBindings("default").Delete(context.Background(), rb.Name, metav1.DeleteOptions{})
		_ = cs.RbacV1().Roles("default").Delete(context.Background(), "nettrace-user", metav1.DeleteOptions{})
		_ = cs.RbacV1().ClusterRoles().Delete(context.Background(), "nettrace-user-nodes", metav1.DeleteOptions{})
	})
	as := func(user string) *rest.Config {
		cfg := adminConfig(t)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
		return cfg
	}

	_, err := clusterTrace(t, as("trace-e2e-nobody"), "svc/nginx-test", cluster.Options{})
	if !errors.Is(err, cluster.ErrForbidden) || !strings.HasPrefix(err.Error(), "forbidden: you may not") ||
		!strings.Contains(err.Error(), `User "trace-e2e-nobody" cannot`) {
		t.Errorf("a user without rights: got %v, want forbidden with the server's message", err)
	}
	path, err := clusterTrace(t, as("trace-e2e-tracer"), "svc/nginx-test", cluster.Options{})
	if err != nil || path.Verdict.Result != trace.Replied {
		t.Errorf("a nettrace-user: got %v, %+v; want the trace replied", err, path)
	}
}

func TestTraceAgentKilledDuringATrace(t *testing.T) {
	agents := traceSetup(t)
	cfg := adminConfig(t)
	w2 := agents["k8s-w2"]

	type result struct {
		path *trace.Path
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		path, err := cluster.Run(ctx, cluster.Options{
			Kube: kubernetes.NewForConfigOrDie(cfg), Dynamic: dynamic.NewForConfigOrDie(cfg),
			Namespace: "default", Source: "client", Target: "pod/server-w2", Proto: "icmp",
			Live: true, Timeout: 15 * time.Second,
		})
		done <- result{path, err}
	}()
	// Once k8s-w2 armed, its agent is killed, leaving its rules behind.
	c := cluster.NewClient(dynamic.NewForConfigOrDie(cfg))
	deadline := time.Now().Add(20 * time.Second)
	for armed := false; !armed; {
		if time.Now().After(deadline) {
			t.Fatal("k8s-w2 did not arm")
		}
		l, err := c.List(context.Background(), "default")
		if err != nil {
			t.Fatal(err)
		}
		for _, nt := range l {
			if e := nt.Status.Node("k8s-w2"); e != nil && e.Armed && nt.Spec.Source == "client" {
				armed = true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(w2.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for proc.Alive(w2.pid) {
		time.Sleep(10 * time.Millisecond)
	}
	if left := traceLeftovers(t, "k8s-w2"); left == "" {
		t.Error("the killed agent left no rules: the test does not show their cleanup")
	}
	labExec(t, "client", "ping", "-c", "1", "-W", "2", podIP(t, "server-w2"))

	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	var out strings.Builder
	_ = render.Render(&out, *r.path, render.Table, render.Options{})
	t.Logf("with k8s-w2's agent killed:\n%s", out.String())
	if !slices.ContainsFunc(r.path.Lost, func(l trace.Loss) bool {
		return l.Node == "k8s-w2" && l.Source == cluster.AgentSource && strings.Contains(l.Detail, "did not report its hops")
	}) {
		t.Errorf("losses %+v, want one naming k8s-w2 as missing", r.path.Lost)
	}
	if !strings.Contains(out.String(), "k8s-w2: the nettrace agent on k8s-w2 armed but did not report") {
		t.Error("the table does not say k8s-w2 is missing")
	}

	// The restarted agent removes what the killed one left, first thing.
	w2.start(t)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left := traceLeftovers(t, "k8s-w2")
		if left == "" {
			break
		}
		if time.Now().After(deadline) || !proc.Alive(w2.pid) {
			t.Fatalf("after the agent restarted, k8s-w2 still has:\n%s", left)
		}
	}
}

// traceLeftovers lists what tracers left in a node's network namespace:
// nettrace tables in nftables, nettrace rules in iptables-legacy.
func traceLeftovers(t *testing.T, node string) string {
	t.Helper()
	var left []string
	for _, argv := range [][]string{{"nft", "list", "tables"}, {"iptables-legacy-save", "-t", "raw"}} {
		out, err := exec.Command("ip", append([]string{"netns", "exec", "nettrace-" + node}, argv...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v on %s: %v: %s", argv, node, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "nettrace_") || strings.Contains(line, "NETTRACE-") || strings.Contains(line, "nettrace:") {
				left = append(left, line)
			}
		}
	}
	return strings.Join(left, "\n")
}
