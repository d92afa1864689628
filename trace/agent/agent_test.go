package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// harness is a cluster of fake API clients and fake node dataplanes, with
// an agent on some of the nodes.
type harness struct {
	t     *testing.T
	dyn   *dynamicfake.FakeDynamicClient
	kube  *kubefake.Clientset
	nodes map[string]*fakeDataplane
	// ttlGrace is given to the agents started.
	ttlGrace time.Duration
}

func newHarness(t *testing.T) *harness {
	return &harness{
		t:    t,
		dyn:  newDynamic(),
		kube: kubefake.NewClientset(testObjects()...),
		nodes: map[string]*fakeDataplane{
			"k8s-w1": newFakeDataplane("k8s-w1", clientIP, nginxW1IP),
			"k8s-w2": newFakeDataplane("k8s-w2", serverW2IP, nginxW2IP),
		},
	}
}

// startAgent runs the agent of node until the returned function, or the
// end of the test, stops it.
func (h *harness) startAgent(node string) (stop func()) {
	h.t.Helper()
	a, err := New(Config{Node: node, Dynamic: h.dyn, Kube: h.kube, Dataplane: h.nodes[node], Log: slog.New(slog.NewTextHandler(h.t.Output(), nil)),
		TTLGrace: h.ttlGrace, TTLInterval: 50 * time.Millisecond})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("agent %s: %v", node, err)
				}
			case <-time.After(10 * time.Second):
				h.t.Errorf("agent %s did not stop", node)
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

// run runs the plugin's side of a trace from the pod client.
func (h *harness) run(target string, opts cluster.Options) (*trace.Path, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts.Kube, opts.Dynamic = h.kube, h.dyn
	opts.Namespace, opts.Source, opts.Target = "default", "client", target
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	if opts.ArmTimeout == 0 {
		opts.ArmTimeout = time.Second
	}
	return cluster.Run(ctx, opts)
}

// phases records the phases a NetTrace goes through, from a watch.
func (h *harness) phases() func() []cluster.Phase {
	w, err := h.dyn.Resource(cluster.Resource).Namespace("default").Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []cluster.Phase
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type != watch.Modified {
				continue
			}
			nt, ok := decode(ev.Object)
			mu.Lock()
			if ok && (len(seen) == 0 || seen[len(seen)-1] != nt.Status.Phase) {
				seen = append(seen, nt.Status.Phase)
			}
			mu.Unlock()
		}
	}()
	h.t.Cleanup(w.Stop)
	return func() []cluster.Phase {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// remaining lists the NetTraces left in the fake API server.
func (h *harness) remaining() []cluster.NetTrace {
	h.t.Helper()
	l, err := cluster.NewClient(h.dyn).List(context.Background(), "")
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

func TestTraceAcrossTwoNodes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	phases := h.phases()

	path, err := h.run("pod/server-w2:8080", cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := trace.Flow{Proto: trace.TCP, Src: clientIP, SrcPort: probePort, Dst: serverW2IP, DstPort: 8080}
	if path.Flow != want || path.Verdict.Result != trace.Replied {
		t.Fatalf("path of %s ended %+v, want %s replied", path.Flow, path.Verdict, want)
	}
	if !slices.Equal(path.Nodes, []string{"k8s-w1", "k8s-w2"}) {
		t.Fatalf("nodes %v", path.Nodes)
	}
	seen := map[string]int{}
	for _, hop := range path.Hops {
		seen[hop.Node+" "+hop.Netns]++
	}
	if seen["k8s-w1 default/client"] == 0 || seen["k8s-w2 default/server-w2"] == 0 {
		t.Fatalf("hops seen %v, want the client's on k8s-w1 and the server's on k8s-w2", seen)
	}
	if !slices.ContainsFunc(path.Hops, func(h trace.Hop) bool {
		return h.Kind == trace.HopDeliver && h.Note == "delivered to default/server-w2"
	}) {
		t.Errorf("the path does not deliver to default/server-w2: %+v", path.Hops)
	}
	if len(path.Lost) != 2 {
		t.Errorf("losses %+v, want the one of each node's source", path.Lost)
	}

	for node, dp := range h.nodes {
		s := dp.session(t)
		if stopped, flow := s.isStopped(); !stopped || flow != want {
			t.Errorf("%s: session stopped %t with %s, want stopped with %s", node, stopped, flow, want)
		}
		server := netip.AddrPortFrom(serverW2IP, 8080)
		if m := s.cfg.Match; !slices.Equal(m.Ports, []uint16{probePort}) || !slices.Equal(m.Ends, []netip.AddrPort{server}) || m.Proto != trace.TCP {
			t.Errorf("%s armed for %+v, want the probe's port and the server", node, s.cfg.Match)
		}
		if s.cfg.Flow != want {
			t.Errorf("%s armed to follow %s, want %s", node, s.cfg.Flow, want)
		}
		if dp.cleaned != 1 {
			t.Errorf("%s: the agent cleaned up %d times at start, want once", node, dp.cleaned)
		}
	}
	if w := h.nodes["k8s-w1"].session(t).cfg.Watch; len(w) != 1 || w[0].Label != "default/client" {
		t.Errorf("k8s-w1 watched %+v, want the client pod", w)
	}
	if w := h.nodes["k8s-w2"].session(t).cfg.Watch; len(w) != 1 || w[0].Label != "default/server-w2" {
		t.Errorf("k8s-w2 watched %+v, want the server pod", w)
	}
	if h.nodes["k8s-w1"].sent != 1 || h.nodes["k8s-w2"].sent != 0 {
		t.Errorf("probes sent: %d on k8s-w1, %d on k8s-w2; want one, from the source node",
			h.nodes["k8s-w1"].sent, h.nodes["k8s-w2"].sent)
	}
	wantPhases := []cluster.Phase{cluster.PhaseArming, cluster.PhaseRunning, cluster.PhaseCollecting, cluster.PhaseDone}
	got := phases()
	for deadline := time.Now().Add(2 * time.Second); !isSubsequence(wantPhases, got) && time.Now().Before(deadline); got = phases() {
		time.Sleep(10 * time.Millisecond) // the test's watch may lag the plugin's
	}
	if !isSubsequence(wantPhases, got) || slices.Contains(got, cluster.PhaseFailed) {
		t.Errorf("phases %v, want them in the order %v", got, wantPhases)
	}
	if left := h.remaining(); len(left) != 0 {
		t.Errorf("%d NetTraces left after the trace", len(left))
	}
}

// isSubsequence reports whether want appears in got in order.
func isSubsequence(want, got []cluster.Phase) bool {
	i := 0
	for _, p := range got {
		if i < len(want) && p == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestServiceTraceWatchesLocalEndpoints(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	path, err := h.run("svc/nginx-test", cluster.Options{Pcap: &strings.Builder{}})
	if err != nil {
		t.Fatal(err)
	}
	if path.Flow.Dst != serviceIP || path.Flow.DstPort != 80 {
		t.Fatalf("flow %s, want to the service", path.Flow)
	}
	w1 := h.nodes["k8s-w1"].session(t).cfg
	if len(w1.Watch) != 2 || w1.Watch[1].Label != "default/nginx-w1" || !slices.Contains(w1.Match.Addrs, nginxW1IP) {
		t.Errorf("k8s-w1 watched %+v for %+v, want the client and the local endpoint", w1.Watch, w1.Match)
	}
	w2 := h.nodes["k8s-w2"].session(t).cfg
	if len(w2.Watch) != 1 || w2.Watch[0].Label != "default/nginx-w2" || !slices.Equal(w2.PathInterfaces, []string{"cali" + nginxW2IP.String()}) {
		t.Errorf("k8s-w2 watched %+v, %v, want its endpoint", w2.Watch, w2.PathInterfaces)
	}
}

func TestMissingAgentFailsTheTraceButShowsThePath(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")

	path, err := h.run("pod/server-w2:8080", cluster.Options{})
	if !errors.Is(err, cluster.ErrCannotRun) || err.Error() != "node k8s-w2: no nettrace agent answered within 1s" {
		t.Fatalf("got %v, want that no agent answered on k8s-w2", err)
	}
	if path == nil || !slices.ContainsFunc(path.Lost, func(l trace.Loss) bool {
		return l.Node == "k8s-w2" && l.Source == cluster.AgentSource && strings.Contains(l.Detail, "no nettrace agent answered")
	}) {
		t.Fatalf("path %+v, want one with a loss naming k8s-w2", path)
	}
	if h.nodes["k8s-w1"].sent != 1 {
		t.Errorf("the source sent %d probes, want it to probe without k8s-w2", h.nodes["k8s-w1"].sent)
	}
	if stopped, _ := h.nodes["k8s-w1"].session(t).isStopped(); !stopped {
		t.Error("the source's session was not stopped")
	}
}

func TestNoAgentOnTheSourceNode(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w2")
	_, err := h.run("pod/server-w2:8080", cluster.Options{})
	if !errors.Is(err, cluster.ErrCannotRun) || err.Error() != "node k8s-w1: no nettrace agent answered within 1s" {
		t.Fatalf("got %v, want that no agent answered on k8s-w1", err)
	}
	if len(h.nodes["k8s-w2"].sessions) != 0 {
		t.Errorf("k8s-w2 armed without a flow")
	}
}

func TestAgentKilledDuringTheTraceIsReportedMissing(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	// k8s-w2 arms, then hangs: it never reports, as if killed with -9.
	h.nodes["k8s-w2"].block = make(chan struct{})
	t.Cleanup(func() { close(h.nodes["k8s-w2"].block) })

	path, err := h.run("pod/server-w2:8080", cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var loss *trace.Loss
	for i, l := range path.Lost {
		if l.Source == cluster.AgentSource {
			loss = &path.Lost[i]
		}
	}
	if loss == nil || loss.Node != "k8s-w2" || !strings.Contains(loss.Detail, "armed but did not report its hops") {
		t.Fatalf("losses %+v, want one saying k8s-w2 did not report", path.Lost)
	}
	if !slices.ContainsFunc(path.Hops, func(h trace.Hop) bool { return h.Node == "k8s-w1" }) {
		t.Error("the source node's hops are missing too")
	}
}

func TestStoppedAgentRestoresAndTellsTheTrace(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	stopW2 := h.startAgent("k8s-w2")
	// The probe waits until k8s-w2's agent was stopped.
	h.nodes["k8s-w1"].send = make(chan struct{})
	go func() {
		for h.nodes["k8s-w2"].sessionCount() == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		stopW2()
		close(h.nodes["k8s-w1"].send)
	}()
	path, err := h.run("pod/server-w2:8080", cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if stopped, _ := h.nodes["k8s-w2"].session(t).isStopped(); !stopped {
		t.Fatal("the stopped agent left its session armed")
	}
	if !slices.ContainsFunc(path.Lost, func(l trace.Loss) bool {
		return l.Node == "k8s-w2" && strings.Contains(l.Detail, "stopped during the trace")
	}) {
		t.Fatalf("losses %+v, want k8s-w2 saying it stopped", path.Lost)
	}
}

func (d *fakeDataplane) sessionCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}

// createTrace creates a NetTrace as the plugin would, from a pod to
// server-w2, with the given source node.
func (h *harness) createTrace(name, source, sourceNode string) *cluster.NetTrace {
	h.t.Helper()
	nt := &cluster.NetTrace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: cluster.Spec{
			Source: source, SourceNode: sourceNode,
			Target: cluster.Target{Given: "pod/server-w2:80", Kind: cluster.TargetPod, Address: serverW2IP.String(), Port: 80,
				Endpoints: []cluster.Endpoint{{Pod: "default/server-w2", Address: serverW2IP.String(), Port: 80, Node: "k8s-w2"}}},
			Flow:       cluster.FlowSpec{Proto: trace.TCP, Dst: serverW2IP.String(), DstPort: 80},
			Mode:       cluster.ModeProbe,
			Timeout:    metav1.Duration{Duration: time.Second},
			ArmTimeout: metav1.Duration{Duration: time.Second},
			Nodes:      []string{sourceNode, "k8s-w2"},
		},
	}
	created, err := cluster.NewClient(h.dyn).Create(context.Background(), nt)
	if err != nil {
		h.t.Fatal(err)
	}
	return created
}

// waitStatus waits until the NetTrace's status satisfies cond.
func (h *harness) waitStatus(name string, cond func(*cluster.NetTrace) bool) *cluster.NetTrace {
	h.t.Helper()
	c := cluster.NewClient(h.dyn)
	deadline := time.Now().Add(10 * time.Second)
	for {
		nt, err := c.Get(context.Background(), "default", name)
		if err != nil {
			h.t.Fatal(err)
		}
		if cond(nt) {
			return nt
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("NetTrace %s did not get there: %+v", name, nt.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSourceAgentRefusesBadRequests(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, source, sourceNode, edit, want string
	}{
		{name: "missing", source: "nowhere", sourceNode: "k8s-w1", want: `pod "nowhere" not found in namespace "default"`},
		{name: "elsewhere", source: "server-w2", sourceNode: "k8s-w1", want: `pod default/server-w2 runs on node "k8s-w2", not on k8s-w1`},
		{name: "host-net", source: "host-net", sourceNode: "k8s-w1", want: "uses the host's network"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.startAgent("k8s-w1")
			h.createTrace(c.name, c.source, c.sourceNode)
			nt := h.waitStatus(c.name, func(nt *cluster.NetTrace) bool { return nt.Status.Final() })
			if nt.Status.Phase != cluster.PhaseFailed || nt.Status.Reason != cluster.ReasonInvalid || !strings.Contains(nt.Status.Message, c.want) {
				t.Fatalf("status %+v, want Failed, Invalid, %q", nt.Status, c.want)
			}
			if len(h.nodes["k8s-w1"].sessions) != 0 {
				t.Error("the agent armed for a bad request")
			}
		})
	}
}

func TestValidFlow(t *testing.T) {
	t.Parallel()
	good := cluster.Spec{Flow: cluster.FlowSpec{Proto: trace.TCP, DstPort: 80}, Mode: cluster.ModeProbe,
		Timeout: metav1.Duration{Duration: time.Second}}
	if err := validFlow(good); err != nil {
		t.Fatal(err)
	}
	for want, edit := range map[string]func(*cluster.Spec){
		"destination port 0":    func(s *cluster.Spec) { s.Flow.DstPort = 0 },
		"destination port 7000": func(s *cluster.Spec) { s.Flow.DstPort = 70000 },
		"icmp has no port":      func(s *cluster.Spec) { s.Flow.Proto = trace.ICMP },
		`protocol "sctp"`:       func(s *cluster.Spec) { s.Flow.Proto = "sctp" },
		`mode "replay"`:         func(s *cluster.Spec) { s.Mode = "replay" },
		"timeout 1h0m0s":        func(s *cluster.Spec) { s.Timeout.Duration = time.Hour },
		"a DNS lookup needs":    func(s *cluster.Spec) { s.Target.Kind = cluster.TargetDNS },
	} {
		s := good
		edit(&s)
		if err := validFlow(s); err == nil || !errors.Is(err, errInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want an invalid error with %q", err, want)
		}
	}
}

func TestDeletedTraceStopsTheSessions(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	h.nodes["k8s-w1"].send = make(chan struct{}) // the probe never answers
	created := h.createTrace("deleted", "client", "k8s-w1")
	h.waitStatus("deleted", func(nt *cluster.NetTrace) bool { return nt.Status.Phase == cluster.PhaseRunning })
	if err := cluster.NewClient(h.dyn).Delete(context.Background(), "default", "deleted", created.UID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for node, dp := range h.nodes {
		for {
			if stopped, _ := dp.session(t).isStopped(); stopped {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not stop its session when the trace was deleted", node)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestRestartedAgentReportsWhatItLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	created := h.createTrace("restarted", "client", "k8s-w1")
	_, err := cluster.NewClient(h.dyn).UpdateStatus(context.Background(), "default", created.Name, func(nt *cluster.NetTrace) bool {
		nt.Status.Phase = cluster.PhaseRunning
		nt.Status.SetNode("k8s-w2").Armed = true
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	h.startAgent("k8s-w2")
	nt := h.waitStatus("restarted", func(nt *cluster.NetTrace) bool { return nt.Status.Node("k8s-w2").Done })
	if e := nt.Status.Node("k8s-w2"); !strings.Contains(e.Error, "the agent restarted during the trace") {
		t.Fatalf("k8s-w2 reports %+v", e)
	}
	if len(h.nodes["k8s-w2"].sessions) != 0 {
		t.Error("the restarted agent armed for a trace it was already part of")
	}
}

func TestExpiredTracesAreDeleted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ttlGrace = time.Millisecond
	old := h.createTrace("old", "client", "k8s-m")
	fresh := h.createTrace("fresh", "client", "k8s-m")
	u, err := h.dyn.Resource(cluster.Resource).Namespace("default").Get(context.Background(), old.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetCreationTimestamp(metav1.NewTime(time.Now().Add(-time.Hour)))
	if _, err := h.dyn.Resource(cluster.Resource).Namespace("default").Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.startAgent("k8s-w1")
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := h.remaining()
		if len(left) == 1 {
			if left[0].UID != fresh.UID {
				t.Fatalf("kept %s, want the fresh trace kept", left[0].Name)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d NetTraces left, want the expired one deleted", len(left))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLiveTraceFollowsThePodsOwnPacket(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	first := trace.Hop{Node: "k8s-w1", Kind: trace.HopInterface, Source: "capture", Netns: "default/client",
		Packet: &trace.Packet{Proto: trace.TCP, Src: clientIP, SrcPort: 45555, Dst: serverW2IP, DstPort: 8080, TCPFlags: "S"}}
	h.nodes["k8s-w1"].live = &first

	path, err := h.run("pod/server-w2:8080", cluster.Options{Live: true})
	if err != nil {
		t.Fatal(err)
	}
	if path.Flow.SrcPort != 45555 {
		t.Fatalf("flow %s, want the live packet's source port", path.Flow)
	}
	if h.nodes["k8s-w1"].sent != 0 {
		t.Error("a live trace sent a probe")
	}
	for node, dp := range h.nodes {
		s := dp.session(t)
		if !slices.Equal(s.cfg.Match.Ports, []uint16{8080}) {
			t.Errorf("%s armed for ports %v, want the destination's", node, s.cfg.Match.Ports)
		}
		if _, flow := s.isStopped(); flow.SrcPort != 45555 {
			t.Errorf("%s stopped with %s, want the live flow", node, flow)
		}
	}
}

func TestDNSTargetIsLookedUpFirst(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	var lookup *trace.Path
	path, err := h.run("nginx-test.default.svc.cluster.local:80", cluster.Options{Lookup: func(p *trace.Path) { lookup = p }})
	if err != nil {
		t.Fatal(err)
	}
	if lookup == nil || lookup.Flow.Proto != trace.UDP || lookup.Flow.DstPort != 53 {
		t.Fatalf("lookup path %+v, want a DNS query's", lookup)
	}
	if path.Flow.Dst != serviceIP || path.Flow.DstPort != 80 || path.Flow.Proto != trace.TCP {
		t.Fatalf("flow %s, want to the address the lookup answered", path.Flow)
	}
	if n := len(h.nodes["k8s-w1"].sessions); n != 2 {
		t.Errorf("k8s-w1 armed %d sessions, want one for the lookup and one for the flow", n)
	}
}

func TestLargeNodeReportIsTrimmed(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	h.nodes["k8s-w2"].extraHops = 6000
	path, err := h.run("pod/server-w2:8080", cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(path.Lost, func(l trace.Loss) bool {
		return l.Node == "k8s-w2" && l.Source == cluster.StatusSource && strings.Contains(l.Detail, "hops were left out")
	}) {
		t.Fatalf("losses %+v, want k8s-w2's trimmed hops reported", path.Lost)
	}
}
