package servicenat

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-nettrace/nettrace/dataplane/iptables"
	"github.com/kubectl-nettrace/nettrace/internal/testns"
)

// backends are the iptables implementations every kernel-facing test runs
// against.
var backends = []Backend{BackendLegacy, BackendNFT}

// newNetNS creates a throwaway network namespace named snat-test-*, deleted
// when the test ends (its iptables rules, links and sockets go with it).
func newNetNS(t testing.TB) ns.NetNS {
	t.Helper()
	return makeNetNS(t, t.Cleanup)
}

// makeNetNS is newNetNS, with the namespace's removal handed to cleanup.
func makeNetNS(t testing.TB, cleanup func(func())) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces and needs root")
	}
	netns, err := testns.Make("snat-test-")
	if err != nil {
		t.Fatal(err)
	}
	cleanup(func() {
		if err := testns.Remove(netns); err != nil {
			t.Error(err)
		}
	})
	return netns
}

// inNS runs a command inside netns and fails the test if it fails.
func inNS(t testing.TB, netns ns.NetNS, name string, args ...string) string {
	t.Helper()
	out, err := iptables.RunIn(context.Background(), netns, name, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// restoreIn applies iptables-restore --noflush input inside netns.
func restoreIn(t testing.TB, netns ns.NetNS, backend Backend, input string) {
	t.Helper()
	if _, err := iptables.RunIn(context.Background(), netns, "iptables-"+string(backend)+"-restore", []byte(input), "--noflush"); err != nil {
		t.Fatal(err)
	}
}

// newSyncer returns a Proxier programming netns with backend, set up as Run
// would but without informers: tests feed sync with Snapshots.
func newSyncer(t testing.TB, netns ns.NetNS, backend Backend) *Proxier {
	t.Helper()
	p, err := New(fake.NewClientset(), testConfig.NodeName, testConfig.NodeIPs,
		Options{Backend: backend, ClusterCIDR: testConfig.ClusterCIDR, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	p.netns = netns
	if err := p.setUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

// table is one table of iptables-save output: each chain's rules, in order.
type table map[string][]string

// counters matches the "[packets:bytes] " prefix of iptables-save -c.
var counters = regexp.MustCompile(`^\[\d+:\d+\] `)

// saveTable reads a table back with iptables-save; withCounters keeps the
// rules' packet counters.
func saveTable(t testing.TB, netns ns.NetNS, backend Backend, name string, withCounters bool) table {
	t.Helper()
	args := []string{"-t", name}
	if withCounters {
		args = append(args, "-c")
	}
	out := inNS(t, netns, "iptables-"+string(backend)+"-save", args...)
	tab := table{}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			tab[strings.Fields(line)[0][1:]] = []string{}
		default:
			rule := counters.ReplaceAllString(line, "")
			if !strings.HasPrefix(rule, "-A ") {
				continue
			}
			if !withCounters {
				line = rule
			}
			chain := strings.Fields(rule)[1]
			tab[chain] = append(tab[chain], line)
		}
	}
	return tab
}

// count returns how many rules of chain contain fragment.
func (tab table) count(chain, fragment string) int {
	n := 0
	for _, r := range tab[chain] {
		if strings.Contains(r, fragment) {
			n++
		}
	}
	return n
}

// serviceChains returns the names of our per-service chains in tab.
func (tab table) serviceChains() []string {
	var names []string
	for c := range tab {
		if isServiceChain(c) {
			names = append(names, c)
		}
	}
	slices.Sort(names)
	return names
}

// checkHostUntouched fails if the host's own rulesets hold any of our
// chains: everything must happen inside the test's namespaces.
func checkHostUntouched(t *testing.T) {
	t.Helper()
	for _, b := range backends {
		out, err := exec.Command("iptables-" + string(b) + "-save").Output()
		if err != nil {
			t.Fatalf("reading the host's %s rules: %v", b, err)
		}
		if strings.Contains(string(out), "KUBE-") {
			t.Errorf("the host's %s ruleset has KUBE- chains", b)
		}
	}
}

func TestDetectBackend(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup map[Backend]string // restore input per backend
		want  Backend
	}{
		{"empty node defaults to nft", nil, BackendNFT},
		{"kubelet hint in legacy", map[Backend]string{
			BackendLegacy: "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
		}, BackendLegacy},
		{"kubelet canary in nft wins over more legacy rules", map[Backend]string{
			BackendNFT:    "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
			BackendLegacy: "*filter\n-A INPUT -s 10.1.0.0/16 -j ACCEPT\n-A INPUT -s 10.2.0.0/16 -j ACCEPT\nCOMMIT\n",
		}, BackendNFT},
		{"no hint: the backend with more rules", map[Backend]string{
			BackendNFT:    "*filter\n-A INPUT -s 10.1.0.0/16 -j ACCEPT\nCOMMIT\n",
			BackendLegacy: "*filter\n-A INPUT -s 10.1.0.0/16 -j ACCEPT\n-A INPUT -s 10.2.0.0/16 -j ACCEPT\nCOMMIT\n",
		}, BackendLegacy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			netns := newNetNS(t)
			for b, input := range tc.setup {
				restoreIn(t, netns, b, input)
			}
			got, why := DetectBackend(context.Background(), netns)
			if got != tc.want {
				t.Errorf("detected %s (%s), want %s", got, why, tc.want)
			}
		})
	}
	checkHostUntouched(t)
}

// foreignRules are another component's rules in the node: they must survive
// every sync.
const foreignRules = `*nat
:CNI-FOREIGN - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -j CNI-FOREIGN
-A POSTROUTING -s 10.99.0.0/16 ! -d 10.99.0.0/16 -j MASQUERADE
-A CNI-FOREIGN -p tcp --dport 9999 -j RETURN
COMMIT
*filter
:CNI-FOREIGN-FILTER - [0:0]
-A FORWARD -j CNI-FOREIGN-FILTER
-A CNI-FOREIGN-FILTER -s 10.99.0.0/16 -j ACCEPT
COMMIT
`

// TestSyncInNetNS applies a full sync, then a partial sync, to a real
// kernel with each backend, and checks with iptables-save that only the
// changed chains moved and that other components' rules survived.
func TestSyncInNetNS(t *testing.T) {
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			ctx := context.Background()
			node := newNetNS(t)
			// A veth pair looping back into the node swallows the test's
			// probe packets (the node does not forward): nothing leaves
			// the namespace.
			inNS(t, node, "ip", "link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
			inNS(t, node, "ip", "link", "set", "sink0", "up")
			inNS(t, node, "ip", "link", "set", "sink1", "up")
			inNS(t, node, "ip", "addr", "add", "10.255.0.1/32", "dev", "sink0")
			inNS(t, node, "ip", "route", "add", "10.96.0.0/12", "dev", "sink0")
			inNS(t, node, "ip", "route", "add", "172.16.0.0/16", "dev", "sink0")

			restoreIn(t, node, backend, foreignRules)
			// A leftover of an earlier run, which the first sync deletes.
			restoreIn(t, node, backend, "*nat\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n-A KUBE-SEP-AAAAAAAAAAAAAAAA -j RETURN\nCOMMIT\n")

			all := goldenSnapshot()
			p := newSyncer(t, node, backend)
			if err := p.sync(ctx, all); err != nil {
				t.Fatalf("full sync: %v", err)
			}
			afterFull := saveTable(t, node, backend, "nat", true)
			if _, ok := afterFull["KUBE-SEP-AAAAAAAAAAAAAAAA"]; ok {
				t.Error("the full sync left a stale KUBE-SEP chain")
			}
			// Everything Build produced is in the kernel.
			for _, c := range serviceChainsOf(Build(all, p.cfg)) {
				if _, ok := afterFull[c]; !ok {
					t.Errorf("chain %s missing after the full sync", c)
				}
			}

			// Probe two services so that their rules count a packet.
			probe(t, node, "10.96.10.1:80")
			probe(t, node, "10.96.20.2:80")
			before := saveTable(t, node, backend, "nat", true)
			webSVC := ServiceChain("default/web:http", "tcp")
			cartSVC := ServiceChain("shop/cart:http", "tcp")
			for _, c := range []string{webSVC, cartSVC} {
				if !slices.ContainsFunc(before[c], func(r string) bool { return !strings.HasPrefix(r, "[0:0]") }) {
					t.Fatalf("the probe did not go through %s: %q", c, before[c])
				}
			}

			// Change cart's endpoints, delete the sticky service.
			changed := goldenSnapshot()
			changed.Services = slices.DeleteFunc(changed.Services, func(s *v1.Service) bool { return s.Name == "sticky" })
			for _, s := range changed.EndpointSlices {
				if s.Name == "cart-1" {
					s.Endpoints = s.Endpoints[:1]
					s.Endpoints = append(s.Endpoints, ready("172.16.3.20", "k8s-w2"))
				}
			}
			u := Build(changed, p.cfg).Update(p.programmed)
			if u.Rewritten != 1 {
				t.Errorf("partial sync rewrites %d services, want 1 (cart)", u.Rewritten)
			}
			if err := p.sync(ctx, changed); err != nil {
				t.Fatalf("partial sync: %v", err)
			}
			after := saveTable(t, node, backend, "nat", true)

			// Exactly the chains of the new rules are there.
			wantAfter := serviceChainsOf(Build(changed, p.cfg))
			if got := after.serviceChains(); !slices.Equal(got, wantAfter) {
				t.Errorf("service chains after the partial sync:\n%v\nwant\n%v", got, wantAfter)
			}
			// Untouched: web's chains, counters and all.
			if !slices.Equal(before[webSVC], after[webSVC]) {
				t.Errorf("unchanged %s was rewritten:\nbefore %q\nafter  %q", webSVC, before[webSVC], after[webSVC])
			}
			for _, ep := range []string{"172.16.1.10:8080", "172.16.1.11:8080", "172.16.2.10:8080"} {
				c := EndpointChain("default/web:http", "tcp", ep)
				if !slices.Equal(before[c], after[c]) {
					t.Errorf("unchanged %s was rewritten", c)
				}
			}
			// Rewritten: cart's chain, counters reset, new endpoint in,
			// old one out.
			if slices.ContainsFunc(after[cartSVC], func(r string) bool { return !strings.HasPrefix(r, "[0:0]") }) {
				t.Errorf("changed %s kept its counters: %q", cartSVC, after[cartSVC])
			}
			if after.count(cartSVC, EndpointChain("shop/cart:http", "tcp", "172.16.3.20:8080")) != 1 {
				t.Errorf("%s does not jump to the new endpoint: %q", cartSVC, after[cartSVC])
			}
			if _, ok := after[EndpointChain("shop/cart:http", "tcp", "172.16.2.20:8080")]; ok {
				t.Error("the removed endpoint's chain is still there")
			}
			// Deleted: sticky's chains and captures.
			if _, ok := after[ServiceChain("default/sticky:http", "tcp")]; ok {
				t.Error("the deleted service's chain is still there")
			}
			if after.count("KUBE-SERVICES", "default/sticky") != 0 {
				t.Error("KUBE-SERVICES still captures the deleted service")
			}

			checkForeignAndJumps(t, node, backend)

			// The partial sync reached the state a full sync reaches.
			partial := saveTable(t, node, backend, "nat", false)
			p.programmed = nil
			if err := p.sync(ctx, changed); err != nil {
				t.Fatalf("second full sync: %v", err)
			}
			full := saveTable(t, node, backend, "nat", false)
			if !tablesEqual(partial, full) {
				t.Errorf("partial sync state differs from a full sync's")
			}
			checkForeignAndJumps(t, node, backend)
		})
	}
	checkHostUntouched(t)
}

// checkForeignAndJumps checks that the foreign rules are intact and that
// each of our jumps is in its built-in chain exactly once.
func checkForeignAndJumps(t *testing.T, netns ns.NetNS, backend Backend) {
	t.Helper()
	nat := saveTable(t, netns, backend, "nat", false)
	filter := saveTable(t, netns, backend, "filter", false)
	for _, want := range []struct {
		tab             table
		chain, fragment string
	}{
		{nat, "PREROUTING", "-j CNI-FOREIGN"},
		{nat, "POSTROUTING", "-s 10.99.0.0/16 ! -d 10.99.0.0/16 -j MASQUERADE"},
		{nat, "CNI-FOREIGN", "--dport 9999 -j RETURN"},
		{filter, "FORWARD", "-j CNI-FOREIGN-FILTER"},
		{filter, "CNI-FOREIGN-FILTER", "-s 10.99.0.0/16 -j ACCEPT"},
	} {
		if n := want.tab.count(want.chain, want.fragment); n != 1 {
			t.Errorf("foreign rule %q in %s: found %d times, want 1", want.fragment, want.chain, n)
		}
	}
	if _, ok := nat["KUBE-KUBELET-CANARY"]; !ok {
		t.Error("kubelet's canary chain was deleted")
	}
	for _, j := range serviceJumps {
		tab := map[string]table{"nat": nat, "filter": filter}[j.Table]
		if n := tab.count(j.From, "-j "+j.To); n != 1 {
			t.Errorf("jump %s -> %s in %s: found %d times, want 1", j.From, j.To, j.Table, n)
		}
	}
}

// serviceChainsOf returns the service chains of r, sorted.
func serviceChainsOf(r *Ruleset) []string {
	var chains []string
	for _, s := range r.services {
		chains = append(chains, s.chains...)
	}
	slices.Sort(chains)
	return chains
}

// tablesEqual compares two tables chain by chain.
func tablesEqual(a, b table) bool {
	if len(a) != len(b) {
		return false
	}
	for c, rules := range a {
		if !slices.Equal(rules, b[c]) {
			return false
		}
	}
	return true
}

// goldenSnapshot merges the golden cases into one cluster.
func goldenSnapshot() Snapshot {
	var all Snapshot
	for _, tc := range goldenCases() {
		all.Services = append(all.Services, tc.snap.Services...)
		all.EndpointSlices = append(all.EndpointSlices, tc.snap.EndpointSlices...)
	}
	return all
}

// probe sends one TCP SYN from the node to addr and does not wait for an
// answer: the dummy link drops it after the nat table has seen it.
func probe(t *testing.T, netns ns.NetNS, addr string) {
	t.Helper()
	err := netns.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: 50 * time.Millisecond}
		conn, err := d.Dial("tcp", addr)
		if err == nil {
			conn.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestGoldenAppliesInNetNS checks that each golden file is accepted as is
// by both backends' iptables-restore.
func TestGoldenAppliesInNetNS(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			node := newNetNS(t)
			for _, f := range files {
				input, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				r := &iptables.Runner{Backend: backend, Netns: node}
				if err := r.Restore(context.Background(), input); err != nil {
					t.Errorf("%s: %v", f, err)
				}
			}
		})
	}
	checkHostUntouched(t)
}

// TestRestoreErrorShowsInput checks that a rejected restore says which
// input lines it choked on.
func TestRestoreErrorShowsInput(t *testing.T) {
	node := newNetNS(t)
	for _, backend := range backends {
		r := &iptables.Runner{Backend: backend, Netns: node}
		err := r.Restore(context.Background(), []byte("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j NO-SUCH-CHAIN\nCOMMIT\n"))
		if err == nil {
			t.Fatalf("%s: a jump to a missing chain was accepted", backend)
		}
		if !strings.Contains(err.Error(), "     3 -A KUBE-SERVICES -j NO-SUCH-CHAIN") {
			t.Errorf("%s: the error does not show the failing line: %v", backend, err)
		}
	}
}

// TestEnsureCounter creates kube-proxy's nfacct counters twice in a
// namespace and uses them in a rule.
func TestEnsureCounter(t *testing.T) {
	node := newNetNS(t)
	for range 2 {
		for _, name := range []string{CounterInvalidDropped, CounterLocalhostNodePorts} {
			if err := ensureCounter(node, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, backend := range backends {
		restoreIn(t, node, backend, "*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name "+CounterInvalidDropped+" -j DROP\nCOMMIT\n")
		if n := saveTable(t, node, backend, "filter", false).count("KUBE-FORWARD", CounterInvalidDropped); n != 1 {
			t.Errorf("%s: %d rules count into %s, want 1", backend, n, CounterInvalidDropped)
		}
	}
	checkHostUntouched(t)
}
