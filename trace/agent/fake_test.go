package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
	"github.com/kubectl-nettrace/nettrace/trace/engine"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// The lab's pods, as the fakes know them.
var (
	clientIP   = netip.MustParseAddr("172.16.198.1")
	serverW2IP = netip.MustParseAddr("172.16.19.1")
	nginxW1IP  = netip.MustParseAddr("172.16.198.3")
	nginxW2IP  = netip.MustParseAddr("172.16.19.2")
	serviceIP  = netip.MustParseAddr("10.111.34.193")
)

// probePort is the source port every fake probe reserves.
const probePort = 40001

// fakeDataplane stands in for the trace engine on one node: its sessions
// report hops made up from the flow they were armed for.
type fakeDataplane struct {
	node string
	pods map[netip.Addr]route.Pod

	// answer is what the node's probes get back; send, when set, is
	// waited for before a probe answers.
	answer probe.Answer
	send   chan struct{}
	// block, when set, makes the node's sessions hang in Settle, as an
	// agent killed during the trace would: they never report.
	block chan struct{}
	// live, when set, is the first packet a live session sees.
	live *trace.Hop
	// extraHops are reported by every session in addition.
	extraHops int

	mu       sync.Mutex
	cleaned  int
	sent     int
	sessions []*fakeSession
}

func newFakeDataplane(node string, pods ...netip.Addr) *fakeDataplane {
	d := &fakeDataplane{node: node, pods: map[netip.Addr]route.Pod{}, answer: probe.Replied}
	for _, ip := range pods {
		d.pods[ip] = route.Pod{IP: ip, HostVeth: "cali" + ip.String(), Netns: "/run/netns/pod-" + ip.String(), PeerName: "eth0"}
	}
	return d
}

func (d *fakeDataplane) Cleanup() ([]netfilter.Session, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cleaned++
	return []netfilter.Session{{ID: "0a1b2c3d", PID: 99999}}, nil
}

func (d *fakeDataplane) FindPod(ip netip.Addr) (route.Pod, error) {
	if p, ok := d.pods[ip]; ok {
		return p, nil
	}
	return route.Pod{}, fmt.Errorf("%s is not a pod on %s", ip, d.node)
}

func (d *fakeDataplane) Plan(pod route.Pod, spec probe.Spec) (Prober, error) {
	proto := trace.Proto(spec.Kind)
	if spec.Kind == probe.DNS {
		proto = trace.UDP
	}
	return &fakeProber{d: d, spec: spec, flow: trace.Flow{Proto: proto, Src: spec.Src, SrcPort: probePort,
		Dst: spec.Dst, DstPort: spec.DstPort}}, nil
}

func (d *fakeDataplane) Start(ctx context.Context, cfg engine.Config) (Session, error) {
	s := &fakeSession{d: d, cfg: cfg}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sessions = append(d.sessions, s)
	return s, nil
}

// session returns the node's only session, failing the test otherwise.
func (d *fakeDataplane) session(t *testing.T) *fakeSession {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.sessions) != 1 {
		t.Fatalf("%s armed %d sessions, want 1", d.node, len(d.sessions))
	}
	return d.sessions[0]
}

type fakeProber struct {
	d    *fakeDataplane
	spec probe.Spec
	flow trace.Flow
}

func (p *fakeProber) Flow() trace.Flow { return p.flow }
func (p *fakeProber) Close() error     { return nil }

func (p *fakeProber) Send(ctx context.Context) (probe.Result, error) {
	p.d.mu.Lock()
	p.d.sent++
	p.d.mu.Unlock()
	if p.d.send != nil {
		select {
		case <-p.d.send:
		case <-ctx.Done():
			return probe.Result{}, ctx.Err()
		}
	}
	r := probe.Result{Flow: p.flow, Answer: p.d.answer, Reply: "SYN-ACK", Sent: time.Now()}
	if p.spec.Kind == probe.DNS {
		r.Reply = "DNS NOERROR, 1 answer"
		r.DNS = &trace.DNS{ID: 7, Response: true, Question: p.spec.Question, Type: "A", Rcode: "NOERROR",
			Answers: []string{"A " + serviceIP.String()}}
	}
	return r, nil
}

// fakeSession is an armed fake session.
type fakeSession struct {
	d   *fakeDataplane
	cfg engine.Config

	mu      sync.Mutex
	stopped bool
	flow    trace.Flow
}

func (s *fakeSession) Await(ctx context.Context, match func(trace.Hop) bool) (trace.Hop, error) {
	if s.d.live != nil {
		// The live packet goes by when the trace waits for it.
		h := *s.d.live
		if h.Time.IsZero() {
			h.Time = time.Now()
		}
		if match(h) {
			return h, nil
		}
	}
	<-ctx.Done()
	return trace.Hop{}, ctx.Err()
}

func (s *fakeSession) Settle(quiet, limit time.Duration) {
	if s.d.block != nil {
		<-s.d.block
	}
}

func (s *fakeSession) Stop(flow trace.Flow) (*engine.Collected, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped, s.flow = true, flow
	hops := []trace.Hop{}
	if flow.Src.IsValid() {
		hops = s.hops(flow)
	}
	return &engine.Collected{Node: s.d.node, Hops: hops,
		Lost: []trace.Loss{{Node: s.d.node, Source: "nflog", Count: 1, Detail: "one event lost"}}}, nil
}

// isStopped reports whether Stop was called, and with which flow.
func (s *fakeSession) isStopped() (bool, trace.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped, s.flow
}

// hops makes up what the node saw of flow: the request on the interfaces
// of the watched pods, and the reply back, the source pod's first and last.
func (s *fakeSession) hops(flow trace.Flow) []trace.Hop {
	base := time.Date(2026, 11, 26, 5, 0, 0, 0, time.UTC)
	var hops []trace.Hop
	add := func(at time.Duration, netns string, p trace.Packet) {
		hops = append(hops, trace.Hop{Time: base.Add(at), Node: s.d.node, Netns: netns, Kind: trace.HopInterface,
			Iface: "eth0", Source: "capture", Packet: &p})
	}
	req := trace.Packet{Proto: flow.Proto, Src: flow.Src, SrcPort: flow.SrcPort, Dst: flow.Dst, DstPort: flow.DstPort, TCPFlags: "S"}
	rep := trace.Packet{Proto: flow.Proto, Src: flow.Dst, SrcPort: flow.DstPort, Dst: flow.Src, DstPort: flow.SrcPort, TCPFlags: "SA"}
	for _, w := range s.cfg.Watch {
		if w.Label == "default/client" {
			add(time.Millisecond, w.Label, req)
			add(10*time.Millisecond, w.Label, rep)
		} else {
			add(5*time.Millisecond, w.Label, req)
			add(6*time.Millisecond, w.Label, rep)
		}
	}
	for i := range s.d.extraHops {
		hops = append(hops, trace.Hop{Time: base.Add(7*time.Millisecond + time.Duration(i)), Node: s.d.node,
			Kind: trace.HopRule, Source: "nflog",
			Rule: &trace.Rule{Backend: "legacy", Family: "ip", Table: "filter", Chain: "FORWARD", Number: i, Type: "rule",
				Text: "-A FORWARD -m comment --comment \"a rule of some length to fill the status\" -j ACCEPT"}})
	}
	return hops
}

// testObjects are the lab's pods and services as the API server has them.
func testObjects() []runtime.Object {
	pod := func(name, node string, ip netip.Addr) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{PodIP: ip.String()},
		}
	}
	host := pod("host-net", "k8s-w1", netip.MustParseAddr("192.168.10.101"))
	host.Spec.HostNetwork = true
	port, number, proto := "http", int32(80), corev1.ProtocolTCP
	ep := func(ip netip.Addr, node, name string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip.String()}, NodeName: &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: name}}
	}
	return []runtime.Object{
		pod("client", "k8s-w1", clientIP),
		pod("server-w2", "k8s-w2", serverW2IP),
		pod("nginx-w1", "k8s-w1", nginxW1IP),
		pod("nginx-w2", "k8s-w2", nginxW2IP),
		host,
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "nginx-test", Namespace: "default"},
			Spec: corev1.ServiceSpec{ClusterIP: serviceIP.String(),
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: "nginx-test-x", Namespace: "default",
				Labels: map[string]string{discoveryv1.LabelServiceName: "nginx-test"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &port, Port: &number, Protocol: &proto}},
			Endpoints:   []discoveryv1.Endpoint{ep(nginxW1IP, "k8s-w1", "nginx-w1"), ep(nginxW2IP, "k8s-w2", "nginx-w2")},
		},
	}
}

// newDynamic returns a fake dynamic client of NetTraces that, as an API
// server does, refuses a write based on a stale resourceVersion.
func newDynamic(objects ...runtime.Object) *dynamicfake.FakeDynamicClient {
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{cluster.Resource: "NetTraceList"}, objects...)
	var mu sync.Mutex
	tracker := dyn.Tracker()
	dyn.PrependReactor("create", "nettraces", func(action k8stesting.Action) (bool, runtime.Object, error) {
		obj := action.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		obj.SetResourceVersion("1")
		if obj.GetUID() == "" {
			obj.SetUID(types.UID("uid-" + obj.GetName()))
		}
		if ts := obj.GetCreationTimestamp(); ts.IsZero() {
			obj.SetCreationTimestamp(metav1.Now())
		}
		return false, nil, nil
	})
	dyn.PrependReactor("update", "nettraces", func(action k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		obj := action.(k8stesting.UpdateAction).GetObject().(*unstructured.Unstructured).DeepCopy()
		stored, err := tracker.Get(cluster.Resource, obj.GetNamespace(), obj.GetName())
		if err != nil {
			return true, nil, err
		}
		old := stored.(*unstructured.Unstructured)
		if old.GetResourceVersion() != obj.GetResourceVersion() {
			return true, nil, apierrors.NewConflict(cluster.Resource.GroupResource(), obj.GetName(),
				fmt.Errorf("resourceVersion %s is stale", obj.GetResourceVersion()))
		}
		rv, _ := strconv.Atoi(old.GetResourceVersion())
		obj.SetResourceVersion(strconv.Itoa(rv + 1))
		if err := tracker.Update(cluster.Resource, obj, obj.GetNamespace()); err != nil {
			return true, nil, err
		}
		return true, obj, nil
	})
	return dyn
}
