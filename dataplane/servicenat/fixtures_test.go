package servicenat

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testNode is the node the fixtures are built for, as in the lab.
const testNode = "k8s-w1"

// testConfig is the lab's k8s-w1: underlay 192.168.10.0/24, pods in
// 172.16.0.0/16.
var testConfig = Config{
	NodeName:    testNode,
	NodeIPs:     []netip.Addr{netip.MustParseAddr("192.168.10.101")},
	ClusterCIDR: netip.MustParsePrefix("172.16.0.0/16"),
}

// makeService returns a ClusterIP Service with one TCP port per ports entry
// ("name:port"), changed by mutate.
func makeService(namespace, name, clusterIP string, mutate func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Selector:   map[string]string{"app": name},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	return svc
}

// makeSlice returns an IPv4 EndpointSlice of a Service with the given ports
// and endpoints.
func makeSlice(namespace, service, name string, ports []discovery.EndpointPort, endpoints ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      name,
			Labels:    map[string]string{discovery.LabelServiceName: service},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   endpoints,
	}
}

// port returns an EndpointSlice port.
func port(name string, number int32, protocol v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ref(name), Port: ref(number), Protocol: ref(protocol)}
}

// ready returns a ready endpoint on node.
func ready(ip, node string) discovery.Endpoint {
	return discovery.Endpoint{
		Addresses:  []string{ip},
		NodeName:   ref(node),
		Conditions: discovery.EndpointConditions{Ready: ref(true), Serving: ref(true), Terminating: ref(false)},
	}
}

// terminating returns an endpoint that is shutting down, still serving or
// not.
func terminating(ip, node string, serving bool) discovery.Endpoint {
	return discovery.Endpoint{
		Addresses:  []string{ip},
		NodeName:   ref(node),
		Conditions: discovery.EndpointConditions{Ready: ref(false), Serving: ref(serving), Terminating: ref(true)},
	}
}

// notReady returns an endpoint whose pod is not ready.
func notReady(ip, node string) discovery.Endpoint {
	return discovery.Endpoint{
		Addresses:  []string{ip},
		NodeName:   ref(node),
		Conditions: discovery.EndpointConditions{Ready: ref(false), Serving: ref(false), Terminating: ref(false)},
	}
}

// manyServices returns n ClusterIP services with e ready endpoints each,
// spread over three nodes: the benchmark's and the scale tests' cluster.
func manyServices(n, e int) Snapshot {
	var snap Snapshot
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		ip := fmt.Sprintf("10.%d.%d.%d", 96+i/65536, i/256%256, i%256)
		snap.Services = append(snap.Services, makeService("bench", name, ip, nil))
		var eps []discovery.Endpoint
		for j := range e {
			k := i*e + j
			eps = append(eps, ready(fmt.Sprintf("172.16.%d.%d", k/250%256, k%250+2), fmt.Sprintf("node-%d", k%3)))
		}
		snap.EndpointSlices = append(snap.EndpointSlices,
			makeSlice("bench", name, name+"-abc", []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}, eps...))
	}
	return snap
}

// ref returns a pointer to a copy of v.
func ref[T any](v T) *T { return &v }
