package cluster

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-nettrace/nettrace/dataplane/loadbalancer"
	"github.com/kubectl-nettrace/nettrace/trace"
)

// outsideCluster is testCluster with every node Ready and a load balancer.
func outsideCluster() []runtime.Object {
	node := func(name, ip string) *corev1.Node {
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Status: corev1.NodeStatus{
				Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			},
		}
	}
	var objs []runtime.Object
	for _, o := range testCluster() {
		if _, ok := o.(*corev1.Node); !ok {
			objs = append(objs, o)
		}
	}
	lb := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "nginx-lb", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.101.59.122",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 32617}}},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{
			Ingress: []corev1.LoadBalancerIngress{{IP: "192.168.10.200"}}}},
	}
	return append(objs,
		node("k8s-m", "192.168.10.10"), node("k8s-w1", "192.168.10.101"), node("k8s-w2", "192.168.10.102"),
		lb, slice("default", "nginx-lb", "http", 80, ep("172.16.198.5", "k8s-w1", "lb-a", true)))
}

func TestResolveOutsideTargets(t *testing.T) {
	r := &resolver{kube: fake.NewClientset(outsideCluster()...), namespace: "default"}
	lbEntry, _ := loadbalancer.Announcer(netip.MustParseAddr("192.168.10.200"), []string{"k8s-m", "k8s-w1", "k8s-w2"})
	nodePortTarget := func(given string) Target {
		return Target{Given: given, Kind: TargetNodePort, Name: "k8s-w2", Namespace: "default", Address: "192.168.10.102",
			Port: 31000, Endpoints: []Endpoint{{Pod: "default/np-a", Address: "172.16.19.4", Port: 80, Node: "k8s-w2"}}}
	}
	for _, c := range []struct {
		target string
		want   Target
		entry  string
		nodes  []string
	}{
		{target: "node/k8s-w2:31000", want: nodePortTarget("node/k8s-w2:31000"), entry: "k8s-w2", nodes: []string{"k8s-w2"}},
		{target: "192.168.10.102:31000", want: nodePortTarget("192.168.10.102:31000"), entry: "k8s-w2", nodes: []string{"k8s-w2"}},
		{
			target: "192.168.10.200:80",
			want: Target{Given: "192.168.10.200:80", Kind: TargetIP, Namespace: "default", Name: "nginx-lb",
				Address: "192.168.10.200", Port: 80,
				Endpoints: []Endpoint{{Pod: "default/lb-a", Address: "172.16.198.5", Port: 80, Node: "k8s-w1"}}},
			entry: lbEntry,
			nodes: uniq(lbEntry, "k8s-w1"),
		},
	} {
		ref, err := ParseTarget(c.target)
		if err != nil {
			t.Fatal(err)
		}
		got, proto, entry, err := r.outsideTarget(context.Background(), request{target: ref})
		if err != nil {
			t.Errorf("%s: %v", c.target, err)
			continue
		}
		if proto != trace.TCP || entry != c.entry || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %s entering by %s %+v\nwant tcp entering by %s %+v", c.target, proto, entry, got, c.entry, c.want)
		}
		if nodes := involvedNodes(entry, got); !reflect.DeepEqual(nodes, c.nodes) {
			t.Errorf("%s: involved nodes %v, want %v", c.target, nodes, c.nodes)
		}
	}
}

func TestResolveOutsideRefusesWhatOutsideTrafficCannotReach(t *testing.T) {
	r := &resolver{kube: fake.NewClientset(outsideCluster()...), namespace: "default"}
	for _, c := range []struct {
		target string
		proto  trace.Proto
		err    string
	}{
		{target: "svc/nginx-test", err: "enters it by a node port or a load balancer"},
		{target: "pod/server-w2:80", err: "enters it by a node port or a load balancer"},
		{target: "web.example.com:80", err: "enters it by a node port or a load balancer"},
		{target: "node/k8s-w2:31000", proto: trace.ICMP, err: "trace tcp or udp"},
		{target: "192.168.10.102", err: "a node port or a load balancer's port is needed"},
		{target: "10.111.34.193:80", err: "10.111.34.193 is neither a node's address nor a load balancer's"},
		{target: "192.168.10.200:443", err: "the load balancer of service default/nginx-lb has no port 443"},
	} {
		ref, err := ParseTarget(c.target)
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, err = r.outsideTarget(context.Background(), request{target: ref, proto: c.proto})
		if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want an invalid error with %q", c.target, err, c.err)
		}
	}
}

func TestOutsideSourceNeedsLive(t *testing.T) {
	_, err := Run(context.Background(), Options{Namespace: "default", Source: "ip/192.168.10.1", Target: "node/k8s-w2:31010"})
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "trace its own traffic with --live") {
		t.Errorf("a probe from outside: got %v, want an invalid error asking for --live", err)
	}
}

// uniq lists the nodes without repeats, in their order.
func uniq(nodes ...string) []string {
	var out []string
	for _, n := range nodes {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func TestCreateRefusedBySchemaAsksForTheCRD(t *testing.T) {
	refused := apierrors.NewInvalid(schema.GroupKind{Group: Group, Kind: Kind}, "trace-ip-192-168-10-1-abc",
		field.ErrorList{field.Required(field.NewPath("spec", "source"), "")})
	err := createError(refused, "default")
	if !errors.Is(err, ErrCannotRun) || !strings.Contains(err.Error(), "apply deploy/crds/nettrace.yaml of this version") ||
		!strings.Contains(err.Error(), "spec.source: Required value") {
		t.Errorf("got %v, want a cannot-run error that asks for the CRD, with the server's message", err)
	}
}
