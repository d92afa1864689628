package servicenat

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubectl-nettrace/nettrace/dataplane/iptables"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
	"github.com/kubectl-nettrace/nettrace/lab/controlplane"
)

func TestMain(m *testing.M) { os.Exit(apitest.Run(m)) }

// The node both proxies program in the comparison and the benchmark: the
// lab's k8s-w1 (testConfig).
var (
	kubeProxyNodeIP      = testConfig.NodeIPs[0]
	kubeProxyClusterCIDR = testConfig.ClusterCIDR
)

// kubeProxyDiffDoc documents, in its kube-proxy-diff blocks, every
// difference TestMatchesKubeProxy may find.
const kubeProxyDiffDoc = "../../docs/servicenat-vs-kube-proxy.md"

// TestMatchesKubeProxy programs the golden fixtures with the real
// kube-proxy (v1.37.2, iptables mode) in one network namespace and with the
// reference Proxier in another, both watching the same API server, on each
// backend, and compares the two iptables-save outputs chain by chain. The
// differences must be exactly those documented in
// docs/servicenat-vs-kube-proxy.md.
func TestMatchesKubeProxy(t *testing.T) {
	binary := kubeProxyBinary(t)
	server := apitest.Get(t)
	client := newClient(t, server.Config)
	snap := goldenSnapshot()
	zoned := zonedSnapshot()
	snap.Services = append(snap.Services, zoned.Services...)
	snap.EndpointSlices = append(snap.EndpointSlices, zoned.EndpointSlices...)
	otherZones := otherZoneEndpoints(zoned)
	if len(otherZones) == 0 {
		t.Fatal("the zoned fixture has no endpoint in another zone")
	}
	createNode(t, client)
	createSnapshot(t, client, snap)
	// Every proxied service must show up in both rulesets before they are
	// compared: kube-proxy's own "default/kubernetes" and the fixtures.
	markers := []string{"default/kubernetes:https"}
	for _, svc := range snap.Services {
		if svc.Spec.ClusterIP != v1.ClusterIPNone {
			markers = append(markers, svc.Namespace+"/"+svc.Name+":")
		}
	}

	// The comparisons run in parallel: most of their time is spent waiting
	// for the rules to settle. The group returns when they are all done.
	t.Run("group", func(t *testing.T) {
		for _, backend := range backends {
			for _, cfg := range kubeProxyConfigs {
				t.Run(string(backend)+"/"+cfg.name, func(t *testing.T) {
					t.Parallel()
					kpNode, refNode := nodeNetNS(t, t.Cleanup), nodeNetNS(t, t.Cleanup)
					kp := startKubeProxy(t, binary, kpNode, backend, server.KubeconfigIn(t, kpNode.Path()), cfg.args...)
					startReference(t, server.Config, refNode, backend, cfg.opts, slog.New(slog.DiscardHandler))

					want := documentedDiff(t, backend, cfg.name)
					// kube-proxy may program its first rules before it has
					// read its Node's zone, over the endpoints of every
					// zone: it has settled once those of other zones are
					// gone.
					kpRules := waitForRules(t, kpNode, backend, markers, otherZones, kp.logTail)
					refRules := waitForRules(t, refNode, backend, markers, nil, nil)
					got := diffRulesets(kpRules, refRules)
					if extra, missing := multisetDiff(got, want); len(extra)+len(missing) > 0 {
						t.Errorf("kube-proxy (-) and the reference (+) differ otherwise than %s documents:\n"+
							"undocumented differences:\n%s\ndocumented differences not found:\n%s\nwhole diff:\n%s",
							kubeProxyDiffDoc, strings.Join(extra, "\n"), strings.Join(missing, "\n"), strings.Join(got, "\n"))
					}
					// Localhost NodePorts need route_localnet: both set it, or
					// neither.
					kpLocalnet, refLocalnet := routeLocalnet(t, kpNode), routeLocalnet(t, refNode)
					if kpLocalnet != refLocalnet {
						t.Errorf("route_localnet is %s with kube-proxy, %s with the reference", kpLocalnet, refLocalnet)
					}
					// Both really programmed the fixtures: the comparison is not
					// between two empty tables.
					for _, rules := range []ruleset{kpRules, refRules} {
						if n := len(rules["nat"].serviceChains()); n < 20 {
							t.Errorf("only %d service chains in a ruleset", n)
						}
					}
				})
			}
		}
	})
	checkHostUntouched(t)
}

// kubeProxyConfigs are the configurations compared: kube-proxy's flags and
// the reference's Options that mean the same.
var kubeProxyConfigs = []struct {
	name string
	args []string
	opts Options
}{
	{"defaults", nil, Options{LocalhostNodePorts: true}},
	// As nettrace-node runs the reference in the lab.
	{"lab", []string{"--iptables-localhost-nodeports=false"}, Options{}},
	{"primary-masquerade-all", []string{"--nodeport-addresses=primary", "--masquerade-all", "--iptables-masquerade-bit=15"},
		Options{LocalhostNodePorts: true, NodePortsOnNodeIPs: true, MasqueradeAll: true, MasqueradeMark: 1 << 15}},
}

// testNodeZone is the zone of testConfig's node in the comparison.
const testNodeZone = "zone-a"

// zonedSnapshot is a Service whose EndpointSlice carries topology hints, as
// the EndpointSlice controller writes them for trafficDistribution
// PreferSameZone: one endpoint for testNodeZone, one for another zone.
func zonedSnapshot() Snapshot {
	hinted := func(ip, node, zone string) discovery.Endpoint {
		ep := ready(ip, node)
		ep.Zone = ref(zone)
		ep.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
		return ep
	}
	return Snapshot{
		Services: []*v1.Service{makeService("zoned", "api", "10.96.70.7", func(s *v1.Service) {
			s.Spec.TrafficDistribution = ref(v1.ServiceTrafficDistributionPreferSameZone)
		})},
		EndpointSlices: []*discovery.EndpointSlice{makeSlice("zoned", "api", "api-1",
			[]discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)},
			hinted("172.16.1.70", testNode, testNodeZone), hinted("172.16.2.70", "k8s-w2", "zone-b"))},
	}
}

// otherZoneEndpoints returns the comments kube-proxy gives the rules of the
// endpoints in snap hinted for zones other than testNodeZone, as
// "namespace/service:port -> address:port".
func otherZoneEndpoints(snap Snapshot) []string {
	var comments []string
	for _, slice := range snap.EndpointSlices {
		for _, ep := range slice.Endpoints {
			if ep.Hints == nil || slices.ContainsFunc(ep.Hints.ForZones, func(z discovery.ForZone) bool { return z.Name == testNodeZone }) {
				continue
			}
			for _, p := range slice.Ports {
				for _, addr := range ep.Addresses {
					comments = append(comments, fmt.Sprintf("%s/%s:%s -> %s:%d",
						slice.Namespace, slice.Labels[discovery.LabelServiceName], *p.Name, addr, *p.Port))
				}
			}
		}
	}
	return comments
}

// kubeProxyBinary returns the kube-proxy `make controlplane` built, failing
// the test when it is missing.
func kubeProxyBinary(tb testing.TB) string {
	tb.Helper()
	dir := apitest.BinDir()
	if err := controlplane.CheckBinaries(dir, "kube-proxy"); err != nil {
		tb.Fatalf("the real kube-proxy is needed to compare with: %v", err)
	}
	return filepath.Join(dir, "kube-proxy")
}

func newClient(tb testing.TB, cfg *rest.Config) kubernetes.Interface {
	tb.Helper()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatalf("creating a client: %v", err)
	}
	return client
}

// createNode creates the Node object of testConfig's node, in
// testNodeZone, which kube-proxy reads its addresses and zone from.
func createNode(tb testing.TB, client kubernetes.Interface) {
	tb.Helper()
	ctx := context.Background()
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, Labels: map[string]string{v1.LabelTopologyZone: testNodeZone}}}
	node, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("creating node %s: %v", testNode, err)
	}
	tb.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), testNode, metav1.DeleteOptions{}) })
	node.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: kubeProxyNodeIP.String()},
		{Type: v1.NodeHostName, Address: testNode},
	}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		tb.Fatalf("setting the addresses of node %s: %v", testNode, err)
	}
}

// createSnapshot creates the Services (with their load-balancer status)
// and EndpointSlices of snap through the API, and deletes them when the test
// ends. Headless Services' slices get the label the EndpointSlice controller
// gives them.
func createSnapshot(tb testing.TB, client kubernetes.Interface, snap Snapshot) {
	tb.Helper()
	ctx := context.Background()
	headless := map[string]bool{}
	for _, svc := range snap.Services {
		ensureNamespace(tb, client, svc.Namespace)
		if err := createService(ctx, client, svc); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			_ = client.CoreV1().Services(svc.Namespace).Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
		})
		if svc.Spec.ClusterIP == v1.ClusterIPNone {
			headless[svc.Namespace+"/"+svc.Name] = true
		}
	}
	for _, slice := range snap.EndpointSlices {
		slice = slice.DeepCopy()
		if headless[slice.Namespace+"/"+slice.Labels[discovery.LabelServiceName]] {
			slice.Labels[v1.IsHeadlessService] = ""
		}
		if _, err := client.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			tb.Fatalf("creating EndpointSlice %s/%s: %v", slice.Namespace, slice.Name, err)
		}
		tb.Cleanup(func() {
			_ = client.DiscoveryV1().EndpointSlices(slice.Namespace).Delete(context.Background(), slice.Name, metav1.DeleteOptions{})
		})
	}
}

// createService creates svc and then, when it has one, its load-balancer
// status, which Create ignores.
func createService(ctx context.Context, client kubernetes.Interface, svc *v1.Service) error {
	created, err := client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	if len(svc.Status.LoadBalancer.Ingress) == 0 {
		return nil
	}
	created.Status = svc.Status
	if _, err := client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the status of service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return nil
}

func ensureNamespace(tb testing.TB, client kubernetes.Interface, name string) {
	tb.Helper()
	_, err := client.CoreV1().Namespaces().Create(context.Background(),
		&v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("creating namespace %s: %v", name, err)
	}
}

// nodeNetNS returns a throwaway network namespace set up as the node:
// loopback up and the node IP on eth0, a veth whose peer stays inside. Its
// removal is handed to cleanup.
func nodeNetNS(tb testing.TB, cleanup func(func())) ns.NetNS {
	tb.Helper()
	netns := makeNetNS(tb, cleanup)
	inNS(tb, netns, "ip", "link", "set", "lo", "up")
	inNS(tb, netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
	inNS(tb, netns, "ip", "addr", "add", netip.PrefixFrom(kubeProxyNodeIP, 24).String(), "dev", "eth0")
	inNS(tb, netns, "ip", "link", "set", "eth0", "up")
	inNS(tb, netns, "ip", "link", "set", "eth0-peer", "up")
	return netns
}

// routeLocalnet reads net.ipv4.conf.all.route_localnet in netns.
func routeLocalnet(tb testing.TB, netns ns.NetNS) string {
	tb.Helper()
	return strings.TrimSpace(inNS(tb, netns, "cat", "/proc/sys/net/ipv4/conf/all/route_localnet"))
}

// kubeProxy is a running kube-proxy process.
type kubeProxy struct {
	cmd  *exec.Cmd
	log  string
	stop func() // SIGTERM, then SIGKILL after 10 s; idempotent
}

// startKubeProxy runs kube-proxy in iptables mode inside netns, on backend,
// configured as startReference configures the reference, and stops it when
// the test ends. kube-proxy runs whatever "iptables" its PATH holds: here a
// directory of links to the backend's binaries, and no ip6tables, so that it
// proxies IPv4 only, as the reference does.
func startKubeProxy(tb testing.TB, binary string, netns ns.NetNS, backend Backend, kubeconfig string, extraArgs ...string) *kubeProxy {
	tb.Helper()
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		tb.Fatal(err)
	}
	for _, tool := range []string{"iptables", "iptables-save", "iptables-restore"} {
		target, err := exec.LookPath(strings.Replace(tool, "iptables", "iptables-"+string(backend), 1))
		if err != nil {
			tb.Fatalf("finding the %s backend's %s: %v", backend, tool, err)
		}
		if err := os.Symlink(target, filepath.Join(bin, tool)); err != nil {
			tb.Fatal(err)
		}
	}
	kp := &kubeProxy{log: filepath.Join(dir, "kube-proxy.log")}
	logFile, err := os.Create(kp.log)
	if err != nil {
		tb.Fatal(err)
	}
	defer logFile.Close()
	args := append([]string{"--net=" + netns.Path(), "--", binary,
		"--kubeconfig", kubeconfig,
		"--proxy-mode", "iptables",
		"--hostname-override", testNode,
		"--bind-address", kubeProxyNodeIP.String(),
		"--cluster-cidr", kubeProxyClusterCIDR.String(),
		// A network namespace cannot raise the host's conntrack table size.
		"--conntrack-max-per-core=0",
		"--metrics-bind-address", kubeProxyMetricsAddr,
		"--healthz-bind-address", "127.0.0.1:10256",
		"--v=2",
	}, extraArgs...)
	kp.cmd = exec.Command(nsenter, args...)
	kp.cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
	kp.cmd.Stdout, kp.cmd.Stderr = logFile, logFile
	// Should the test binary die, kube-proxy dies with it.
	kp.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := kp.cmd.Start(); err != nil {
		tb.Fatalf("starting kube-proxy: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = kp.cmd.Wait(); close(exited) }()
	kp.stop = sync.OnceFunc(func() {
		_ = kp.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = kp.cmd.Process.Kill()
			<-exited
		}
	})
	tb.Cleanup(kp.stop)
	return kp
}

// kubeProxyMetricsAddr is where kube-proxy serves its metrics, on the
// loopback of its network namespace.
const kubeProxyMetricsAddr = "127.0.0.1:10249"

// logTail returns the end of kube-proxy's log, for failure messages.
func (kp *kubeProxy) logTail() string {
	out, err := os.ReadFile(kp.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// startReference runs the reference Proxier for testConfig's node inside
// netns, with opts on backend and a client of its own, and stops it when the
// test ends.
func startReference(tb testing.TB, cfg *rest.Config, netns ns.NetNS, backend Backend, opts Options, logger *slog.Logger) {
	tb.Helper()
	opts.Backend, opts.ClusterCIDR, opts.NetNSPath, opts.Logger = backend, kubeProxyClusterCIDR, netns.Path(), logger
	p, err := New(newClient(tb, cfg), testNode, []netip.Addr{kubeProxyNodeIP}, opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("reference Proxier: %v", err)
		}
	})
}

// waitForRules polls the ruleset of netns until every marker appears in it,
// none of gone does, and it stays the same for longer than a sync interval,
// and returns it normalised. describe, when not nil, explains a timeout.
func waitForRules(tb testing.TB, netns ns.NetNS, backend Backend, markers, gone []string, describe func() string) ruleset {
	tb.Helper()
	const stableFor = 2 * DefaultMinSyncInterval
	deadline := time.Now().Add(90 * time.Second)
	var last ruleset
	var lastChange time.Time
	for {
		out, err := iptables.RunIn(context.Background(), netns, "iptables-"+string(backend)+"-save", nil)
		if err != nil {
			tb.Fatal(err)
		}
		now := normaliseSave(string(out))
		if len(diffRulesets(last, now)) > 0 {
			last, lastChange = now, time.Now()
		}
		complete := !slices.ContainsFunc(markers, func(m string) bool { return !strings.Contains(string(out), m) }) &&
			!slices.ContainsFunc(gone, func(m string) bool { return strings.Contains(string(out), m) })
		if complete && time.Since(lastChange) > stableFor {
			return now
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out waiting for the rules in %s (complete: %t)", netns.Path(), complete)
			if describe != nil {
				msg += "\n" + describe()
			}
			tb.Fatal(msg)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// ruleset is iptables-save output normalised for comparison: each table's
// chains and their rules.
type ruleset map[string]table

// builtinChains are the chains iptables creates with a table.
var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// canaryChains are the empty chains kube-proxy and kubelet create to notice
// that someone flushed the tables; the reference leaves them to kubelet.
var canaryChains = map[string]bool{"KUBE-PROXY-CANARY": true, "KUBE-KUBELET-CANARY": true}

// capturingChains hold one group of rules per service port, which
// kube-proxy writes in the random order of a Go map: the groups capture
// disjoint traffic, so their order does not matter.
var capturingChains = map[string]bool{
	chainServices: true, chainExternalServices: true, chainNodePorts: true, chainProxyFirewall: true,
}

// capturedPort returns the service port a rule of a capturing chain is for,
// named at the start of its comment, or "" for the chain's other rules, such
// as the jump to KUBE-NODEPORTS that must stay last.
func capturedPort(rule string) string {
	m := ruleComment.FindStringSubmatch(rule)
	if m == nil {
		return ""
	}
	name, _, _ := strings.Cut(strings.Trim(m[1], `"`), " ")
	if !strings.Contains(name, "/") {
		return ""
	}
	return name
}

// sortCaptures sorts the rules of a capturing chain by service port, keeping
// the order of one port's rules and the place of every other rule.
func sortCaptures(rules []string) {
	var places []int
	var captures []string
	for i, r := range rules {
		if capturedPort(r) != "" {
			places = append(places, i)
			captures = append(captures, r)
		}
	}
	slices.SortStableFunc(captures, func(a, b string) int { return strings.Compare(capturedPort(a), capturedPort(b)) })
	for i, place := range places {
		rules[place] = captures[i]
	}
}

// normaliseSave parses iptables-save output into a ruleset without what does
// not tell the two proxies apart: counters, the canary chains, built-in
// chains without rules (and tables left without chains), the position of a
// rule's comment (moved to its end), leading zeros in marks, and the order of
// the service ports' groups of rules in the capturing chains.
func normaliseSave(save string) ruleset {
	rs := ruleset{}
	var tab table
	for line := range strings.Lines(save) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			tab = table{}
			rs[line[1:]] = tab
		case strings.HasPrefix(line, ":"):
			if chain := strings.Fields(line)[0][1:]; !canaryChains[chain] {
				tab[chain] = []string{}
			}
		case strings.HasPrefix(line, "-A "):
			rule := normaliseRule(line)
			if chain := strings.Fields(rule)[1]; !canaryChains[chain] {
				tab[chain] = append(tab[chain], rule)
			}
		}
	}
	for name, tab := range rs {
		for chain, rules := range tab {
			if builtinChains[chain] && len(rules) == 0 {
				delete(tab, chain)
			}
			if capturingChains[chain] {
				sortCaptures(rules)
			}
		}
		if len(tab) == 0 {
			delete(rs, name)
		}
	}
	return rs
}

var (
	// ruleComment is a comment match as iptables-save prints it.
	ruleComment = regexp.MustCompile(` -m comment --comment ("(?:[^"\\]|\\.)*"|\S+)`)
	// hexZeros are the leading zeros of a hexadecimal number.
	hexZeros = regexp.MustCompile(`\b0x0+([0-9a-fA-F])`)
)

// normaliseRule moves a rule's comment to its end and strips leading zeros
// from hexadecimal numbers.
func normaliseRule(rule string) string {
	var comments []string
	rule = ruleComment.ReplaceAllStringFunc(rule, func(m string) string {
		comments = append(comments, m)
		return ""
	})
	rule = hexZeros.ReplaceAllString(rule, "0x$1")
	return rule + strings.Join(comments, "")
}

// diffRulesets compares two rulesets chain by chain. Each difference is one
// line: "-" for what only kube-proxy (a) has, "+" for what only the
// reference (b) has, then the table and the rule (or ":CHAIN" for a chain
// only one side declares). Within a chain, rules are matched in order, so a
// moved rule shows as removed and added.
func diffRulesets(a, b ruleset) []string {
	var diff []string
	for _, name := range sortedUnion(a, b) {
		ta, tb := a[name], b[name]
		for _, chain := range sortedUnion(ta, tb) {
			ra, inA := ta[chain]
			rb, inB := tb[chain]
			if inA != inB {
				sign := map[bool]string{true: "-", false: "+"}[inA]
				diff = append(diff, fmt.Sprintf("%s %s :%s", sign, name, chain))
			}
			for _, d := range lineDiffLCS(ra, rb) {
				diff = append(diff, d[:1]+" "+name+" "+d[2:])
			}
		}
	}
	return diff
}

func sortedUnion[V any](a, b map[string]V) []string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// maxLCSCells bounds the table of lineDiffLCS; longer chains (the
// benchmark's KUBE-SERVICES) are compared as multisets.
const maxLCSCells = 1 << 22

// lineDiffLCS returns the lines of a not in b ("- line") and of b not in a
// ("+ line") along a longest common subsequence, in order. Chains too long
// for that are compared without regard to order.
func lineDiffLCS(a, b []string) []string {
	if slices.Equal(a, b) {
		return nil
	}
	if (len(a)+1)*(len(b)+1) > maxLCSCells {
		onlyA, onlyB := multisetDiff(a, b)
		var diff []string
		for _, l := range onlyA {
			diff = append(diff, "- "+l)
		}
		for _, l := range onlyB {
			diff = append(diff, "+ "+l)
		}
		return diff
	}
	// lcs[i][j] is the length of the longest common subsequence of a[i:]
	// and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var diff []string
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			i++
			j++
		case j == len(b) || (i < len(a) && lcs[i+1][j] >= lcs[i][j+1]):
			diff = append(diff, "- "+a[i])
			i++
		default:
			diff = append(diff, "+ "+b[j])
			j++
		}
	}
	return diff
}

// documentedDiff reads the differences docs/servicenat-vs-kube-proxy.md
// documents for backend and config: the lines of its fenced blocks whose
// info string is "kube-proxy-diff" followed by the backends and
// configurations they hold for.
func documentedDiff(tb testing.TB, backend Backend, config string) []string {
	tb.Helper()
	f, err := os.Open(kubeProxyDiffDoc)
	if err != nil {
		tb.Fatalf("reading the documented differences: %v", err)
	}
	defer f.Close()
	var diff []string
	in, applies, blocks := false, false, 0
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := scanner.Text()
		switch {
		case !in && strings.HasPrefix(line, "```kube-proxy-diff"):
			in, blocks = true, blocks+1
			applies = slices.Contains(strings.Fields(line)[1:], string(backend)) &&
				slices.Contains(strings.Fields(line)[1:], config)
		case in && line == "```":
			in = false
		case in && applies && strings.TrimSpace(line) != "":
			diff = append(diff, line)
		}
	}
	if err := scanner.Err(); err != nil {
		tb.Fatal(err)
	}
	if blocks == 0 {
		tb.Fatalf("%s has no kube-proxy-diff block", kubeProxyDiffDoc)
	}
	return diff
}

// multisetDiff returns the lines of got that want lacks and those of want
// that got lacks, counting repeats.
func multisetDiff(got, want []string) (extra, missing []string) {
	count := map[string]int{}
	for _, l := range want {
		count[l]++
	}
	for _, l := range got {
		if count[l] > 0 {
			count[l]--
		} else {
			extra = append(extra, l)
		}
	}
	for _, l := range want {
		if count[l] > 0 {
			count[l]--
			missing = append(missing, l)
		}
	}
	return extra, missing
}

// TestNormaliseSave checks that the comparison ignores what does not tell
// two rulesets apart, and only that.
func TestNormaliseSave(t *testing.T) {
	const nodePorts = `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`
	kubeProxy := `# Generated by iptables-save v1.8.9 (legacy)
*mangle
:PREROUTING ACCEPT [12:720]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m comment --comment "b/y:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-B
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "a/x:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-A
` + nodePorts + `
COMMIT
`
	reference := `*nat
:PREROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "a/x:http cluster IP" -j KUBE-SVC-A
-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment "b/y:http cluster IP" -j KUBE-SVC-B
` + nodePorts + `
COMMIT
`
	if diff := diffRulesets(normaliseSave(kubeProxy), normaliseSave(reference)); len(diff) > 0 {
		t.Errorf("equivalent rulesets differ:\n%s", strings.Join(diff, "\n"))
	}

	// A changed port, a chain only one side has, and the jump to
	// KUBE-NODEPORTS no longer last are differences.
	for _, tc := range []struct {
		name      string
		old, new  string
		wantLines []string
	}{
		{"changed port", `--dport 80 -m comment --comment "a/x`, `--dport 81 -m comment --comment "a/x`, []string{
			`- nat -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A -m comment --comment "a/x:http cluster IP"`,
			`+ nat -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 81 -j KUBE-SVC-A -m comment --comment "a/x:http cluster IP"`,
		}},
		{"extra chain", ":KUBE-SERVICES - [0:0]\n", ":KUBE-SERVICES - [0:0]\n:KUBE-SEP-C - [0:0]\n", []string{"+ nat :KUBE-SEP-C"}},
		{"node ports first", "-A KUBE-SERVICES -d 10.96.0.1/32", nodePorts + "\n-A KUBE-SERVICES -d 10.96.0.1/32", nil},
	} {
		changed := strings.Replace(reference, tc.old, tc.new, 1)
		if tc.name == "node ports first" {
			changed = strings.Replace(changed, "KUBE-SVC-B\n"+nodePorts+"\n", "KUBE-SVC-B\n", 1)
		}
		got := diffRulesets(normaliseSave(kubeProxy), normaliseSave(changed))
		if len(got) == 0 {
			t.Errorf("%s: no difference found", tc.name)
		}
		if tc.wantLines != nil && !slices.Equal(got, tc.wantLines) {
			t.Errorf("%s: diff\n%s\nwant\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.wantLines, "\n"))
		}
	}
}
