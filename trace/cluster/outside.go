package cluster

import (
	"context"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kubectl-nettrace/nettrace/dataplane/loadbalancer"
	"github.com/kubectl-nettrace/nettrace/trace"
)

// outsideTarget resolves the target of a trace from an address outside the
// cluster. Traffic from outside enters the cluster by a node port or a load
// balancer's address, so the target is one of them: node/NAME:NODEPORT, a
// node's address and node port, or a load balancer's address and port. It
// also returns the node the traffic enters by, whose agent leads the trace.
func (r *resolver) outsideTarget(ctx context.Context, req request) (Target, trace.Proto, string, error) {
	ref := req.target
	if req.proto == trace.ICMP {
		return Target{}, "", "", invalidf("target %q: from outside the cluster, trace tcp or udp to a node port or a load balancer", ref.Given)
	}
	switch ref.Kind {
	case TargetNodePort:
		t, proto, err := r.target(ctx, req)
		return t, proto, t.Name, err
	case TargetIP:
		return r.outsideAddress(ctx, req)
	}
	return Target{}, "", "", invalidf("target %q: traffic from outside the cluster enters it by a node port or a load balancer: "+
		"trace to node/NAME:NODEPORT, NODE-IP:NODEPORT or LOAD-BALANCER-IP:PORT", ref.Given)
}

// outsideAddress resolves IP:PORT, traced from outside the cluster: the
// address of a node, then the target is that node's node port, or the
// address of a load balancer, then the target is the service's port and
// the traffic enters by the node that announces the address.
func (r *resolver) outsideAddress(ctx context.Context, req request) (Target, trace.Proto, string, error) {
	ref := req.target
	t := Target{Given: ref.Given, Kind: ref.Kind, Address: ref.Addr.String()}
	port := ref.Port
	switch {
	case req.port != 0 && port != 0 && port != req.port:
		return t, "", "", invalidf("target %q names a port and --port %d another", ref.Given, req.port)
	case port == 0 && req.port == 0:
		return t, "", "", invalidf("target %q: a node port or a load balancer's port is needed: %s:PORT or --port", ref.Given, ref.Given)
	case port == 0:
		port = req.port
	}
	nodes, err := r.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return t, "", "", apiError(err, "list", "nodes", "")
	}
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Address != t.Address {
				continue
			}
			t.Kind, t.Name = TargetNodePort, n.Name
			proto := req.proto
			if proto == "" {
				proto = trace.TCP
			}
			if err := r.nodePortEndpoints(ctx, &t, port); err != nil {
				return t, "", "", err
			}
			return t, proto, n.Name, setPort(&t, port, proto)
		}
	}

	svc, sp, err := r.loadBalancer(ctx, ref, port, req.proto)
	if err != nil {
		return t, "", "", err
	}
	t.Namespace, t.Name, t.Port = svc.Namespace, svc.Name, sp.Port
	if t.Endpoints, err = r.endpoints(ctx, svc, sp); err != nil {
		return t, "", "", err
	}
	entry, err := r.announcer(ctx, svc, ref.Addr, nodes.Items)
	proto := trace.TCP
	if sp.Protocol == corev1.ProtocolUDP {
		proto = trace.UDP
	}
	return t, proto, entry, err
}

// loadBalancer finds the LoadBalancer service whose address is ref's, in
// the namespace or, if the user may list them, in any, and its port.
func (r *resolver) loadBalancer(ctx context.Context, ref TargetRef, port uint16, proto trace.Proto) (*corev1.Service, corev1.ServicePort, error) {
	for _, ns := range []string{r.namespace, metav1.NamespaceAll} {
		svcs, err := r.kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range svcs.Items {
			svc := &svcs.Items[i]
			if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || !hasIngress(svc, ref.Addr) {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				if sp.Port == int32(port) && (proto == "" || strings.EqualFold(string(sp.Protocol), string(proto))) {
					return svc, sp, nil
				}
			}
			return nil, corev1.ServicePort{}, invalidf("target %q: the load balancer of service %s/%s has no port %d: its ports are %s",
				ref.Given, svc.Namespace, svc.Name, port, portList(svc.Spec.Ports))
		}
	}
	return nil, corev1.ServicePort{}, invalidf("target %q: %s is neither a node's address nor a load balancer's", ref.Given, ref.Addr)
}

// hasIngress reports whether addr is one of the service's load balancer
// addresses.
func hasIngress(svc *corev1.Service, addr netip.Addr) bool {
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == addr.String() {
			return true
		}
	}
	return false
}

// announcer is the node that answers ARP for a load balancer's address,
// where its traffic enters the cluster: the one that MetalLB's layer 2
// mode, and the lab's load balancer, choose from the eligible nodes.
func (r *resolver) announcer(ctx context.Context, svc *corev1.Service, addr netip.Addr, nodes []corev1.Node) (string, error) {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}).String()
	list, err := r.kube.DiscoveryV1().EndpointSlices(svc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return "", apiError(err, "list", "endpointslices", svc.Namespace)
	}
	nodePtrs := make([]*corev1.Node, len(nodes))
	for i := range nodes {
		nodePtrs[i] = &nodes[i]
	}
	slicePtrs := make([]*discoveryv1.EndpointSlice, len(list.Items))
	for i := range list.Items {
		slicePtrs[i] = &list.Items[i]
	}
	node, ok := loadbalancer.Announcer(addr, loadbalancer.EligibleNodes(svc, nodePtrs, slicePtrs))
	if !ok {
		return "", invalidf("no node announces %s, the load balancer address of %s/%s: none is eligible", addr, svc.Namespace, svc.Name)
	}
	return node, nil
}
