package cluster

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// testCluster is a cluster of three nodes with the pods and services of
// the lab's examples.
func testCluster() []runtime.Object {
	pod := func(name, node, ip string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{PodIP: ip},
		}
	}
	hostPod := pod("host-agent", "k8s-w1", "192.168.10.101")
	hostPod.Spec.HostNetwork = true
	svc := func(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       corev1.ServiceSpec{ClusterIP: ip, Ports: ports},
		}
	}
	nodePort := corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 31000}
	return []runtime.Object{
		pod("client", "k8s-w1", "172.16.198.1"),
		pod("server-w2", "k8s-w2", "172.16.19.1"),
		pod("pending", "", ""),
		pod("six", "k8s-w1", "fd00::5"),
		hostPod,
		svc("default", "nginx-test", "10.111.34.193", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}),
		slice("default", "nginx-test", "http", 8080,
			ep("172.16.19.2", "k8s-w2", "nginx-test-a", true),
			ep("172.16.198.3", "k8s-w1", "nginx-test-b", true),
			ep("172.16.19.3", "k8s-w2", "nginx-test-c", false)),
		svc("default", "two-ports", "10.96.5.5",
			corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
			corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}),
		svc("default", "no-endpoints", "10.96.7.7", corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}),
		svc("default", "headless", "None", corev1.ServicePort{Port: 80}),
		svc("default", "nginx-nodeport", "10.108.146.17", nodePort),
		slice("default", "nginx-nodeport", "http", 80, ep("172.16.19.4", "k8s-w2", "np-a", true)),
		svc("kube-system", "kube-dns", "10.96.0.10", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}),
		slice("kube-system", "kube-dns", "dns", 53, ep("172.16.65.1", "k8s-m", "coredns-a", true)),
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "k8s-w2"},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: "k8s-w2"},
				{Type: corev1.NodeInternalIP, Address: "192.168.10.102"},
			}},
		},
	}
}

func ep(ip, node, pod string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		NodeName:   &node,
		Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: pod},
	}
}

func slice(ns, svc, port string, number int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	proto := corev1.ProtocolTCP
	if port == "dns" {
		proto = corev1.ProtocolUDP
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-abcde", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &port, Port: &number, Protocol: &proto}},
		Endpoints:   eps,
	}
}

func TestResolveTargets(t *testing.T) {
	r := &resolver{kube: fake.NewClientset(testCluster()...), namespace: "default"}
	for _, c := range []struct {
		target string
		proto  trace.Proto
		port   uint16
		want   Target
		wantP  trace.Proto
		nodes  []string
	}{{
		target: "svc/nginx-test",
		want: Target{Kind: TargetService, Namespace: "default", Name: "nginx-test", Address: "10.111.34.193", Port: 80,
			Endpoints: []Endpoint{
				{Pod: "default/nginx-test-a", Address: "172.16.19.2", Port: 8080, Node: "k8s-w2"},
				{Pod: "default/nginx-test-b", Address: "172.16.198.3", Port: 8080, Node: "k8s-w1"},
			}},
		wantP: trace.TCP,
		nodes: []string{"k8s-w1", "k8s-w2"},
	}, {
		target: "two-ports:dns",
		want:   Target{Kind: TargetService, Namespace: "default", Name: "two-ports", Address: "10.96.5.5", Port: 53},
		wantP:  trace.UDP,
		nodes:  []string{"k8s-w1"},
	}, {
		target: "two-ports", proto: trace.UDP,
		want:  Target{Kind: TargetService, Namespace: "default", Name: "two-ports", Address: "10.96.5.5", Port: 53},
		wantP: trace.UDP,
		nodes: []string{"k8s-w1"},
	}, {
		target: "no-endpoints",
		want:   Target{Kind: TargetService, Namespace: "default", Name: "no-endpoints", Address: "10.96.7.7", Port: 80},
		wantP:  trace.TCP,
		nodes:  []string{"k8s-w1"},
	}, {
		target: "pod/server-w2", port: 80,
		want: Target{Kind: TargetPod, Namespace: "default", Name: "server-w2", Address: "172.16.19.1", Port: 80,
			Endpoints: []Endpoint{{Pod: "default/server-w2", Address: "172.16.19.1", Port: 80, Node: "k8s-w2"}}},
		wantP: trace.TCP,
		nodes: []string{"k8s-w1", "k8s-w2"},
	}, {
		target: "pod/server-w2", proto: trace.ICMP,
		want: Target{Kind: TargetPod, Namespace: "default", Name: "server-w2", Address: "172.16.19.1",
			Endpoints: []Endpoint{{Pod: "default/server-w2", Address: "172.16.19.1", Node: "k8s-w2"}}},
		wantP: trace.ICMP,
		nodes: []string{"k8s-w1", "k8s-w2"},
	}, {
		target: "10.111.34.193:80",
		want: Target{Kind: TargetIP, Namespace: "default", Name: "nginx-test", Address: "10.111.34.193", Port: 80,
			Endpoints: []Endpoint{
				{Pod: "default/nginx-test-a", Address: "172.16.19.2", Port: 8080, Node: "k8s-w2"},
				{Pod: "default/nginx-test-b", Address: "172.16.198.3", Port: 8080, Node: "k8s-w1"},
			}},
		wantP: trace.TCP,
		nodes: []string{"k8s-w1", "k8s-w2"},
	}, {
		target: "172.16.19.1:8080",
		want: Target{Kind: TargetIP, Namespace: "default", Name: "server-w2", Address: "172.16.19.1", Port: 8080,
			Endpoints: []Endpoint{{Pod: "default/server-w2", Address: "172.16.19.1", Port: 8080, Node: "k8s-w2"}}},
		wantP: trace.TCP,
		nodes: []string{"k8s-w1", "k8s-w2"},
	}, {
		target: "node/k8s-w2:31000",
		want: Target{Kind: TargetNodePort, Namespace: "default", Name: "k8s-w2", Address: "192.168.10.102", Port: 31000,
			Endpoints: []Endpoint{{Pod: "default/np-a", Address: "172.16.19.4", Port: 80, Node: "k8s-w2"}}},
		wantP: trace.TCP,
		nodes: []string{"k8s-w1", "k8s-w2"},
	}, {
		target: "nginx-test.default.svc.cluster.local:80",
		want: Target{Kind: TargetDNS, Name: "nginx-test.default.svc.cluster.local", Address: "10.96.0.10", Port: 53,
			Endpoints: []Endpoint{{Pod: "kube-system/coredns-a", Address: "172.16.65.1", Port: 53, Node: "k8s-m"}}},
		wantP: trace.UDP,
		nodes: []string{"k8s-w1", "k8s-m"},
	}, {
		target: "external:192.168.10.250:80",
		want:   Target{Kind: TargetExternal, Address: "192.168.10.250", Port: 80},
		wantP:  trace.TCP,
		nodes:  []string{"k8s-w1"},
	}} {
		ref, err := ParseTarget(c.target)
		if err != nil {
			t.Fatal(err)
		}
		got, proto, err := r.target(context.Background(), request{target: ref, proto: c.proto, port: c.port})
		if err != nil {
			t.Errorf("%s: %v", c.target, err)
			continue
		}
		c.want.Given = c.target
		if !reflect.DeepEqual(got, c.want) || proto != c.wantP {
			t.Errorf("%s:\n got %s %+v\nwant %s %+v", c.target, proto, got, c.wantP, c.want)
		}
		if nodes := involvedNodes("k8s-w1", got); !reflect.DeepEqual(nodes, c.nodes) {
			t.Errorf("%s: involved nodes %v, want %v", c.target, nodes, c.nodes)
		}
	}
}

func TestResolveRefusesBadRequests(t *testing.T) {
	r := &resolver{kube: fake.NewClientset(testCluster()...), namespace: "default"}
	for _, c := range []struct {
		target string
		proto  trace.Proto
		port   uint16
		err    string
	}{
		{target: "svc/missing", err: `service "missing" not found in namespace "default"`},
		{target: "nginx-test:8443", err: "service default/nginx-test has no port 8443: its ports are 80/TCP (http)"},
		{target: "nginx-test:grpc", err: "has no port grpc"},
		{target: "nginx-test", proto: trace.UDP, err: "has no port any/udp"},
		{target: "nginx-test", proto: trace.ICMP, err: "not icmp"},
		{target: "nginx-test:80", port: 81, err: "names a port and --port 81 another"},
		{target: "two-ports", err: "has the ports 80/TCP (http), 53/UDP (dns): pick one with two-ports:PORT or --port"},
		{target: "headless", err: "is headless"},
		{target: "pod/server-w2", err: "tracing tcp needs a port"},
		{target: "pod/nowhere:80", err: `pod "nowhere" not found in namespace "default"`},
		{target: "172.16.19.1:80", proto: trace.ICMP, err: "icmp has no port"},
		{target: "node/k8s-w9:31000", err: `node "k8s-w9" not found`},
	} {
		ref, err := ParseTarget(c.target)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = r.target(context.Background(), request{target: ref, proto: c.proto, port: c.port})
		if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want an invalid error with %q", c.target, err, c.err)
		}
	}
}

func TestResolveSource(t *testing.T) {
	r := &resolver{kube: fake.NewClientset(testCluster()...), namespace: "default"}
	src, err := r.sourcePod(context.Background(), "client")
	if err != nil || src.node != "k8s-w1" || src.ip.String() != "172.16.198.1" {
		t.Fatalf("sourcePod(client) = %+v, %v", src, err)
	}
	for name, want := range map[string]string{
		"missing":    `pod "missing" not found in namespace "default"`,
		"host-agent": "pod default/host-agent uses the host's network",
		"pending":    "pod default/pending is not scheduled on a node yet",
		"six":        "only IPv4 is supported yet",
	} {
		_, err := r.sourcePod(context.Background(), name)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("sourcePod(%s) = %v, want an invalid error with %q", name, err, want)
		}
	}
}
