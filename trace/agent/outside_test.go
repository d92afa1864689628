package agent

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// The outside world of the lab: the external netns's address, and the
// node port of nodeport-dnat, whose one pod runs on k8s-w1.
var (
	outsideIP = netip.MustParseAddr("192.168.10.1")
	w2NodeIP  = netip.MustParseAddr("192.168.10.102")
)

const nodePort = 31010

// addNodePort adds the node k8s-w2 and a NodePort service whose endpoint
// is the nginx pod on k8s-w1.
func (h *harness) addNodePort() {
	h.t.Helper()
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "k8s-w2"}, Status: corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: w2NodeIP.String()}}}}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "nodeport-dnat", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: "10.107.234.208",
			Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP, NodePort: nodePort}}},
	}
	port, number, proto, w1 := "", int32(80), corev1.ProtocolTCP, "k8s-w1"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "nodeport-dnat-x", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "nodeport-dnat"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &port, Port: &number, Protocol: &proto}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{nginxW1IP.String()}, NodeName: &w1,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "nginx-w1"}}},
	}
	if _, err := h.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.kube.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func TestTraceFromOutsideIsLedByTheNodeItEnters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.addNodePort()
	h.startAgent("k8s-w1")
	h.startAgent("k8s-w2")
	first := trace.Hop{Node: "k8s-w2", Kind: trace.HopInterface, Source: "capture", Iface: "eth0",
		Packet: &trace.Packet{Proto: trace.TCP, Src: outsideIP, SrcPort: 51000, Dst: w2NodeIP, DstPort: nodePort, TCPFlags: "S"}}
	h.nodes["k8s-w2"].live = &first
	var created *cluster.NetTrace
	armed := 0

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path, err := cluster.Run(ctx, cluster.Options{
		Kube: h.kube, Dynamic: h.dyn, Namespace: "default",
		Source: "ip/" + outsideIP.String(), Target: "node/k8s-w2:31010", Live: true,
		Timeout: time.Second, ArmTimeout: time.Second,
		Armed: func() {
			armed++
			l, err := cluster.NewClient(h.dyn).List(ctx, "default")
			if err == nil && len(l) == 1 {
				created = &l[0]
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := trace.Flow{Proto: trace.TCP, Src: outsideIP, SrcPort: 51000, Dst: w2NodeIP, DstPort: nodePort}
	if path.Flow != want {
		t.Fatalf("flow %s, want the outside client's own %s", path.Flow, want)
	}
	if armed != 1 || created == nil {
		t.Fatalf("Armed was called %d times, want once, while the NetTrace exists", armed)
	}
	spec := created.Spec
	if spec.SourceIP != outsideIP.String() || spec.Source != "" || spec.SourceNode != "k8s-w2" ||
		spec.Mode != cluster.ModeLive || !slices.Equal(spec.Nodes, []string{"k8s-w2", "k8s-w1"}) ||
		!strings.HasPrefix(created.Name, "trace-ip-192-168-10-1-") {
		t.Errorf("NetTrace %s: spec %+v, want led by k8s-w2 from 192.168.10.1, with k8s-w1", created.Name, spec)
	}

	// The node it enters by sees the request to the node port; the
	// endpoint's node, the request after the DNAT and the SNAT.
	request := func(src netip.Addr, dst netip.AddrPort) (netip.AddrPort, netip.AddrPort) {
		return netip.AddrPortFrom(src, 51000), dst
	}
	w2 := h.nodes["k8s-w2"].session(t).cfg
	if !w2.Match.Covers(request(outsideIP, netip.AddrPortFrom(w2NodeIP, nodePort))) ||
		!slices.Contains(w2.Match.Addrs, outsideIP) || len(w2.Watch) != 0 {
		t.Errorf("k8s-w2 armed for %+v watching %+v, want the node port and the outside address, no pod", w2.Match, w2.Watch)
	}
	w1 := h.nodes["k8s-w1"].session(t).cfg
	if !w1.Match.Covers(request(netip.MustParseAddr("172.16.19.0"), netip.AddrPortFrom(nginxW1IP, 80))) ||
		len(w1.Watch) != 1 || w1.Watch[0].Label != "default/nginx-w1" {
		t.Errorf("k8s-w1 armed for %+v watching %+v, want the endpoint's port and namespace", w1.Match, w1.Watch)
	}
	for node, dp := range h.nodes {
		if dp.sent != 0 {
			t.Errorf("%s sent a probe from outside the cluster", node)
		}
		if _, flow := dp.session(t).isStopped(); flow != want {
			t.Errorf("%s stopped with %s, want %s", node, flow, want)
		}
	}
	if !slices.ContainsFunc(path.Hops, func(h trace.Hop) bool { return h.Node == "k8s-w1" && h.Netns == "default/nginx-w1" }) {
		t.Errorf("the path misses what k8s-w1 saw in the endpoint's namespace: %+v", path.Hops)
	}
}

func TestTraceFromOutsideRefusesAProbe(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.startAgent("k8s-w2")
	nt := &cluster.NetTrace{
		ObjectMeta: metav1.ObjectMeta{Name: "outside-probe", Namespace: "default"},
		Spec: cluster.Spec{
			SourceIP: outsideIP.String(), SourceNode: "k8s-w2",
			Target:  cluster.Target{Given: "node/k8s-w2:31010", Kind: cluster.TargetNodePort, Name: "k8s-w2", Address: w2NodeIP.String(), Port: nodePort},
			Flow:    cluster.FlowSpec{Proto: trace.TCP, Dst: w2NodeIP.String(), DstPort: nodePort},
			Mode:    cluster.ModeProbe,
			Timeout: metav1.Duration{Duration: time.Second},
			Nodes:   []string{"k8s-w2"},
		},
	}
	if _, err := cluster.NewClient(h.dyn).Create(context.Background(), nt); err != nil {
		t.Fatal(err)
	}
	// The fake API server has no schema: the agent checks for itself.
	got := h.waitStatus("outside-probe", func(nt *cluster.NetTrace) bool { return nt.Status.Final() })
	if got.Status.Phase != cluster.PhaseFailed || got.Status.Reason != cluster.ReasonInvalid ||
		!strings.Contains(got.Status.Message, "the trace must be live") {
		t.Fatalf("status %+v, want Failed, Invalid: the trace must be live", got.Status)
	}
	if len(h.nodes["k8s-w2"].sessions) != 0 {
		t.Error("the agent armed for a probe from outside the cluster")
	}
}
