package assert

import (
	"context"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Failure is an expectation that a path does not meet.
type Failure struct {
	// Line and Field are the expectation's place in the file.
	Line  int
	Field string
	// Expected and Observed say in words what the file asks for and what
	// the path shows instead.
	Expected, Observed string
}

// Check compares the path of a case with the case's expectations and
// returns those it does not meet, in the file's order. The error says
// that a pod or node the expectations name could not be looked up.
func Check(ctx context.Context, c Case, p trace.Path, cl Cluster) ([]Failure, error) {
	var failures []Failure
	e := c.Expect
	if e.Verdict != nil {
		failures = append(failures, checkVerdict(c, *e.Verdict, p)...)
	}
	if e.NAT != nil {
		f, err := checkNAT(ctx, c, p, cl)
		if err != nil {
			return nil, err
		}
		failures = append(failures, f...)
	}
	if e.Tunnel != "" {
		failures = append(failures, checkTunnel(c, p)...)
	}
	for _, r := range e.Hits {
		if hits := ruleHits(p, r); len(hits) == 0 {
			failures = append(failures, Failure{Line: r.Line, Field: r.Field, Expected: "a hop of " + r.describe(),
				Observed: "no rule hop matches; the path went through " + chainsOf(p)})
		}
	}
	for _, r := range e.Misses {
		if hits := ruleHits(p, r); len(hits) > 0 {
			failures = append(failures, Failure{Line: r.Line, Field: r.Field, Expected: "no hop of " + r.describe(),
				Observed: "hit " + ruleText(hits[0])})
		}
	}
	slices.SortStableFunc(failures, func(a, b Failure) int { return a.Line - b.Line })
	return failures, nil
}

// checkVerdict compares how the path ended.
func checkVerdict(c Case, v Verdict, p trace.Path) []Failure {
	got := p.Verdict
	ok := got.Result == v.Result
	expected := string(v.Result)
	if v.DroppedBy != "" {
		expected = "dropped by " + v.DroppedBy
		ok = ok && droppedBy(v.DroppedBy, got.Where)
	}
	if ok {
		return nil
	}
	return []Failure{{Line: v.Line, Field: c.Field + ".expect.verdict", Expected: expected, Observed: verdictText(got)}}
}

// droppedBy reports whether the glob matches the chain of the place that
// dropped the packet ("filter KUBE-SERVICES #3 REJECT"), or all of it.
func droppedBy(glob, where string) bool {
	if ok, _ := path.Match(glob, where); ok {
		return true
	}
	f := strings.Fields(where)
	if len(f) < 2 || f[0] == "route" {
		return false
	}
	ok, _ := path.Match(glob, f[1])
	return ok
}

// verdictText writes a verdict as the table's last line does.
func verdictText(v trace.Verdict) string {
	s := string(v.Result)
	if v.Where != "" {
		s += " at [" + v.Node + "] " + v.Where
	}
	if v.Reason != "" {
		s += ": " + v.Reason
	}
	return s
}

// checkNAT compares the path's rewrites with the expected ones.
func checkNAT(ctx context.Context, c Case, p trace.Path, cl Cluster) ([]Failure, error) {
	var nats []trace.Hop
	for _, h := range p.Hops {
		if h.NAT != nil {
			nats = append(nats, h)
		}
	}
	e := c.Expect
	if len(e.NAT) == 0 {
		if len(nats) == 0 {
			return nil, nil
		}
		return []Failure{{Line: e.NATLine, Field: c.Field + ".expect.nat", Expected: "no NAT",
			Observed: natsText(nats)}}, nil
	}
	var failures []Failure
	for _, want := range e.NAT {
		to, err := resolveAddress(ctx, c.Namespace, want.To, cl)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", want.Field, err)
		}
		expected := want.Type
		if to.text != "" {
			expected += " to " + to.text
		}
		matched := slices.ContainsFunc(nats, func(h trace.Hop) bool {
			return h.NAT.Type == want.Type && to.accepts(h.NAT.To)
		})
		if matched {
			continue
		}
		failures = append(failures, Failure{Line: want.Line, Field: want.Field, Expected: expected, Observed: natsText(nats)})
	}
	return failures, nil
}

// target is a resolved Address: the addresses and port it accepts, and
// its words.
type target struct {
	addrs []netip.Addr
	// any accepts every address: the expectation names only the type.
	any  bool
	port uint16
	text string
}

func (t target) accepts(e trace.Endpoint) bool {
	return (t.any || slices.Contains(t.addrs, e.Addr())) && (t.port == 0 || e.Port() == t.port)
}

// resolveAddress looks up the pods or node an address names.
func resolveAddress(ctx context.Context, namespace string, a Address, cl Cluster) (target, error) {
	t := target{port: a.Port}
	withPort := func(s string) string {
		if a.Port != 0 {
			return s + " port " + strconv.Itoa(int(a.Port))
		}
		return s
	}
	switch {
	case a.Selector != "":
		pods, err := cl.Pods(ctx, namespace, a.Selector)
		if err != nil {
			return t, err
		}
		var names []string
		for _, p := range pods {
			t.addrs = append(t.addrs, p.IP)
			names = append(names, p.Name+" "+p.IP.String())
		}
		if len(names) == 0 {
			names = []string{"it selects none in namespace " + namespace}
		}
		t.text = withPort(fmt.Sprintf("a pod that %s selects (%s)", a.Selector, strings.Join(names, ", ")))
	case a.Pod != "":
		ns, name, qualified := strings.Cut(a.Pod, "/")
		if !qualified {
			ns, name = namespace, a.Pod
		}
		p, err := cl.Pod(ctx, ns, name)
		if err != nil {
			return t, err
		}
		t.addrs = []netip.Addr{p.IP}
		t.text = withPort(fmt.Sprintf("pod %s (%s)", p.Name, p.IP))
	case a.IP.IsValid():
		t.addrs = []netip.Addr{a.IP}
		t.text = withPort(a.IP.String())
	case a.Node != "":
		addrs, err := cl.NodeAddresses(ctx, a.Node)
		if err != nil {
			return t, err
		}
		t.addrs = addrs
		var s []string
		for _, ip := range addrs {
			s = append(s, ip.String())
		}
		t.text = withPort(fmt.Sprintf("node %s (%s)", a.Node, strings.Join(s, ", ")))
	default:
		t.any = true
		if a.Port != 0 {
			t.text = withPort("any address")
		}
	}
	return t, nil
}

// natsText lists the rewrites of a path.
func natsText(nats []trace.Hop) string {
	if len(nats) == 0 {
		return "no NAT"
	}
	var s []string
	for _, h := range nats {
		n := h.NAT
		w := fmt.Sprintf("%s %s → %s on %s", n.Type, n.From, n.To, h.Node)
		if n.ByChain != "" {
			w += " by " + n.ByChain
		}
		s = append(s, w)
	}
	return strings.Join(s, "; ")
}

// checkTunnel compares the encapsulation between nodes.
func checkTunnel(c Case, p trace.Path) []Failure {
	var types []string
	var first *trace.Hop
	for i, h := range p.Hops {
		t := h.Tunnel
		if t == nil && h.Packet != nil {
			t = h.Packet.Outer
		}
		if t == nil {
			continue
		}
		if first == nil {
			first = &p.Hops[i]
		}
		if !slices.Contains(types, t.Type) {
			types = append(types, t.Type)
		}
	}
	want := c.Expect.Tunnel
	if want == "none" && len(types) == 0 || len(types) == 1 && types[0] == want {
		return nil
	}
	observed := "none: no hop was encapsulated"
	if first != nil {
		t := first.Tunnel
		if t == nil {
			t = first.Packet.Outer
		}
		observed = fmt.Sprintf("%s, first on %s: %s %s → %s", strings.Join(types, " and "), first.Node, t.Type, t.Src, t.Dst)
	}
	expected := want
	if want == "none" {
		expected = "no tunnel"
	}
	return []Failure{{Line: c.Expect.TunnelLine, Field: c.Field + ".expect.tunnel", Expected: expected, Observed: observed}}
}

// describe writes what a rule match selects: "nat chain KUBE-SVC-* on k8s-w1".
func (r RuleMatch) describe() string {
	var s []string
	if r.Table != "" {
		s = append(s, "table "+r.Table)
	}
	if r.Chain != "" {
		s = append(s, "chain "+r.Chain)
	}
	if r.Rule != "" {
		s = append(s, fmt.Sprintf("a rule with %q", r.Rule))
	}
	if r.Node != "" {
		s = append(s, "on node "+r.Node)
	}
	return strings.Join(s, ", ")
}

// ruleHits returns the rule hops that r selects.
func ruleHits(p trace.Path, r RuleMatch) []trace.Hop {
	glob := func(pattern, s string) bool {
		ok, _ := path.Match(pattern, s)
		return pattern == "" || ok
	}
	var hits []trace.Hop
	for _, h := range p.Hops {
		if h.Rule == nil {
			continue
		}
		if glob(r.Table, h.Rule.Table) && glob(r.Chain, h.Rule.Chain) && glob(r.Node, h.Node) &&
			strings.Contains(h.Rule.Text, r.Rule) {
			hits = append(hits, h)
		}
	}
	return hits
}

// ruleText writes a rule hop: "[k8s-w1] nat KUBE-SEP-X #2: -A KUBE-SEP-X …".
func ruleText(h trace.Hop) string {
	r := h.Rule
	at := ""
	switch {
	case r.Type == "policy" || r.Type == "return":
		at = " " + r.Type
	case r.Number != 0:
		at = " #" + strconv.Itoa(r.Number)
	case r.Handle != 0:
		at = " handle " + strconv.FormatUint(r.Handle, 10)
	}
	s := fmt.Sprintf("[%s] %s %s%s", h.Node, r.Table, r.Chain, at)
	if r.Text != "" {
		s += ": " + r.Text
	}
	return s
}

// chainsOf lists the chains the path's rule hops went through, each once:
// "[k8s-w1] nat PREROUTING, KUBE-SERVICES; filter FORWARD".
func chainsOf(p trace.Path) string {
	type key struct{ node, table string }
	var order []key
	chains := map[key][]string{}
	for _, h := range p.Hops {
		if h.Rule == nil {
			continue
		}
		k := key{h.Node, h.Rule.Table}
		if _, ok := chains[k]; !ok {
			order = append(order, k)
		}
		if !slices.Contains(chains[k], h.Rule.Chain) {
			chains[k] = append(chains[k], h.Rule.Chain)
		}
	}
	if len(order) == 0 {
		return "no rule"
	}
	var s []string
	for _, k := range order {
		s = append(s, fmt.Sprintf("[%s] %s %s", k.node, k.table, strings.Join(chains[k], ", ")))
	}
	return strings.Join(s, "; ")
}
