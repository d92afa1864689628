package cluster

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// The cluster DNS service, asked for DNS targets; DefaultClusterDNS is its
// address when the service cannot be read.
const (
	clusterDNSNamespace = "kube-system"
	clusterDNSService   = "kube-dns"
	DefaultClusterDNS   = "10.96.0.10"
	dnsPort             = 53
)

// resolver turns a request into a NetTrace spec, reading pods, services,
// endpoint slices and nodes with the user's rights.
type resolver struct {
	kube      kubernetes.Interface
	namespace string
}

// request is a parsed trace request, with the flags that shape the flow.
type request struct {
	source SourceRef
	target TargetRef
	// proto is the --proto flag, empty when not given.
	proto trace.Proto
	// port is the --port flag, zero when not given.
	port uint16
}

// source is the resolved source: a pod, or an address outside the
// cluster (pod is nil), and the node whose agent leads the trace.
type source struct {
	pod  *corev1.Pod
	ip   netip.Addr
	node string
}

// name names the source in the NetTrace's name and label: the pod's name,
// or "ip-192-168-10-1".
func (s source) name() string {
	if s.pod != nil {
		return s.pod.Name
	}
	return "ip-" + strings.ReplaceAll(s.ip.String(), ".", "-")
}

// sourcePod reads and checks the source pod: it must exist in the
// namespace, run on a node, have its own IPv4 address.
func (r *resolver) sourcePod(ctx context.Context, name string) (source, error) {
	pod, err := r.kube.CoreV1().Pods(r.namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return source{}, invalidf("pod %q not found in namespace %q", name, r.namespace)
	}
	if err != nil {
		return source{}, apiError(err, "get", "pods", r.namespace)
	}
	id := r.namespace + "/" + name
	switch {
	case pod.Spec.HostNetwork:
		return source{}, invalidf("pod %s uses the host's network: a trace starts from a pod with a network namespace of its own", id)
	case pod.Spec.NodeName == "":
		return source{}, invalidf("pod %s is not scheduled on a node yet", id)
	case pod.Status.PodIP == "":
		return source{}, invalidf("pod %s has no IP address yet", id)
	}
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || !ip.Is4() {
		return source{}, invalidf("pod %s has the address %s: only IPv4 is supported yet", id, pod.Status.PodIP)
	}
	return source{pod: pod, ip: ip, node: pod.Spec.NodeName}, nil
}

// target resolves the target into its address, port and endpoints, and
// returns the protocol of the flow.
func (r *resolver) target(ctx context.Context, req request) (Target, trace.Proto, error) {
	ref := req.target
	t := Target{Given: ref.Given, Kind: ref.Kind}
	port := ref.Port
	if req.port != 0 {
		if port != 0 && port != req.port || ref.PortName != "" {
			return t, "", invalidf("target %q names a port and --port %d another", ref.Given, req.port)
		}
		port = req.port
	}
	proto := cmp.Or(req.proto, trace.TCP)
	var err error
	switch ref.Kind {
	case TargetService:
		t.Namespace, t.Name = r.namespace, ref.Name
		var svc *corev1.Service
		if svc, err = r.service(ctx, r.namespace, ref.Name); err != nil {
			return t, "", err
		}
		proto, err = r.servicePort(ctx, &t, svc, port, ref.PortName, req.proto)
		return t, proto, err
	case TargetPod:
		t.Namespace, t.Name = r.namespace, ref.Name
		err = r.podTarget(ctx, &t)
	case TargetIP:
		t.Address = ref.Addr.String()
		if proto, err = r.addressTarget(ctx, &t, port, req.proto); err != nil || t.Port != 0 {
			return t, proto, err
		}
	case TargetNodePort:
		t.Name = ref.Name
		err = r.nodePortTarget(ctx, &t, port)
	case TargetDNS:
		t.Name = ref.Name
		return t, trace.UDP, r.dnsTarget(ctx, &t)
	case TargetExternal:
		t.Address = ref.Addr.String()
	}
	if err != nil {
		return t, "", err
	}
	return t, proto, setPort(&t, port, proto)
}

// setPort sets the target's port, and its endpoints' where the target
// does not map it: tcp and udp need one, icmp has none.
func setPort(t *Target, port uint16, proto trace.Proto) error {
	switch {
	case proto == trace.ICMP && port != 0:
		return invalidf("target %q: icmp has no port", t.Given)
	case proto != trace.ICMP && port == 0:
		return invalidf("target %q: tracing %s needs a port: %s:PORT or --port", t.Given, proto, t.Given)
	}
	t.Port = int32(port)
	for i := range t.Endpoints {
		if t.Endpoints[i].Port == 0 && proto != trace.ICMP {
			t.Endpoints[i].Port = t.Port
		}
	}
	return nil
}

func (r *resolver) service(ctx context.Context, namespace, name string) (*corev1.Service, error) {
	svc, err := r.kube.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, invalidf("service %q not found in namespace %q", name, namespace)
	}
	if err != nil {
		return nil, apiError(err, "get", "services", namespace)
	}
	return svc, nil
}

// servicePort chooses the service's port that the flow goes to, by
// number or name, or the only one, and fills in the target's address,
// port and endpoints.
func (r *resolver) servicePort(ctx context.Context, t *Target, svc *corev1.Service, port uint16, name string, proto trace.Proto) (trace.Proto, error) {
	id := svc.Namespace + "/" + svc.Name
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return "", invalidf("service %s is an ExternalName (%s): trace to that name instead", id, svc.Spec.ExternalName)
	case svc.Spec.ClusterIP == corev1.ClusterIPNone || svc.Spec.ClusterIP == "":
		return "", invalidf("service %s is headless: trace to one of its pods, pod/NAME", id)
	case proto == trace.ICMP:
		return "", invalidf("service %s forwards tcp and udp, not icmp: trace icmp to one of its pods", id)
	}
	addr, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !addr.Is4() {
		return "", invalidf("service %s has the cluster IP %s: only IPv4 is supported yet", id, svc.Spec.ClusterIP)
	}
	var candidates []corev1.ServicePort
	for _, sp := range svc.Spec.Ports {
		if (port == 0 || sp.Port == int32(port)) && (name == "" || sp.Name == name) &&
			(proto == "" || strings.EqualFold(string(sp.Protocol), string(proto))) {
			candidates = append(candidates, sp)
		}
	}
	switch {
	case len(candidates) == 0 && port == 0 && name == "" && proto == "":
		return "", invalidf("service %s has no ports", id)
	case len(candidates) == 0:
		want := cmp.Or(name, fmt.Sprint(port))
		if port == 0 && name == "" {
			want = "any"
		}
		if proto != "" {
			want += "/" + string(proto)
		}
		return "", invalidf("service %s has no port %s: its ports are %s", id, want, portList(svc.Spec.Ports))
	case len(candidates) > 1:
		return "", invalidf("service %s has the ports %s: pick one with %s:PORT or --port", id, portList(svc.Spec.Ports), svc.Name)
	}
	sp := candidates[0]
	switch sp.Protocol {
	case corev1.ProtocolTCP, "":
		proto = trace.TCP
	case corev1.ProtocolUDP:
		proto = trace.UDP
	default:
		return "", invalidf("service %s port %d is %s: only tcp and udp can be traced", id, sp.Port, sp.Protocol)
	}
	t.Address, t.Port = addr.String(), sp.Port
	t.Endpoints, err = r.endpoints(ctx, svc, sp)
	return proto, err
}

// portList formats a service's ports: "80/TCP (http), 443/TCP".
func portList(ports []corev1.ServicePort) string {
	var s []string
	for _, p := range ports {
		e := fmt.Sprintf("%d/%s", p.Port, cmp.Or(p.Protocol, corev1.ProtocolTCP))
		if p.Name != "" {
			e += " (" + p.Name + ")"
		}
		s = append(s, e)
	}
	return strings.Join(s, ", ")
}

// endpoints lists the ready IPv4 endpoints of a service's port, with the
// port each listens on.
func (r *resolver) endpoints(ctx context.Context, svc *corev1.Service, sp corev1.ServicePort) ([]Endpoint, error) {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}).String()
	list, err := r.kube.DiscoveryV1().EndpointSlices(svc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, apiError(err, "list", "endpointslices", svc.Namespace)
	}
	var eps []Endpoint
	for _, s := range list.Items {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		port, ok := slicePort(s, sp)
		if !ok {
			continue
		}
		for _, e := range s.Endpoints {
			if len(e.Addresses) == 0 || e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			ep := Endpoint{Address: e.Addresses[0], Port: port}
			if e.NodeName != nil {
				ep.Node = *e.NodeName
			}
			if ref := e.TargetRef; ref != nil && ref.Kind == "Pod" {
				ep.Pod = cmp.Or(ref.Namespace, svc.Namespace) + "/" + ref.Name
			}
			eps = append(eps, ep)
		}
	}
	slices.SortFunc(eps, func(a, b Endpoint) int { return cmp.Compare(a.Address, b.Address) })
	return slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.Address == b.Address }), nil
}

// slicePort is the port of slice s that serves the service port sp.
func slicePort(s discoveryv1.EndpointSlice, sp corev1.ServicePort) (int32, bool) {
	for _, p := range s.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name == sp.Name && p.Port != nil {
			return *p.Port, true
		}
	}
	return 0, false
}

// podTarget resolves a pod target to its address and node.
func (r *resolver) podTarget(ctx context.Context, t *Target) error {
	pod, err := r.kube.CoreV1().Pods(t.Namespace).Get(ctx, t.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return invalidf("pod %q not found in namespace %q", t.Name, t.Namespace)
	}
	if err != nil {
		return apiError(err, "get", "pods", t.Namespace)
	}
	ep, err := podEndpoint(pod)
	if err != nil {
		return err
	}
	t.Address, t.Endpoints = ep.Address, []Endpoint{ep}
	return nil
}

// podEndpoint is a running pod as an endpoint.
func podEndpoint(pod *corev1.Pod) (Endpoint, error) {
	id := pod.Namespace + "/" + pod.Name
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	switch {
	case pod.Status.PodIP == "":
		return Endpoint{}, invalidf("pod %s has no IP address yet", id)
	case err != nil || !ip.Is4():
		return Endpoint{}, invalidf("pod %s has the address %s: only IPv4 is supported yet", id, pod.Status.PodIP)
	}
	ep := Endpoint{Address: ip.String(), Node: pod.Spec.NodeName}
	if !pod.Spec.HostNetwork {
		ep.Pod = id
	}
	return ep, nil
}

// addressTarget finds what an address is: a service's cluster IP (then
// the port and endpoints are the service's), or a pod's IP. It looks in
// the namespace first, then, if the user may, in every namespace; an
// address it does not find is traced as it is.
func (r *resolver) addressTarget(ctx context.Context, t *Target, port uint16, proto trace.Proto) (trace.Proto, error) {
	for _, ns := range []string{r.namespace, metav1.NamespaceAll} {
		svcs, err := r.kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue // not allowed to look: the address is traced as it is
		}
		for i := range svcs.Items {
			if svc := &svcs.Items[i]; svc.Spec.ClusterIP == t.Address {
				t.Namespace, t.Name = svc.Namespace, svc.Name
				return r.servicePort(ctx, t, svc, port, "", proto)
			}
		}
		sel := fields.OneTermEqualSelector("status.podIP", t.Address).String()
		pods, err := r.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			continue
		}
		for i := range pods.Items {
			if pod := &pods.Items[i]; pod.Status.PodIP == t.Address && !pod.Spec.HostNetwork {
				ep, err := podEndpoint(pod)
				if err != nil {
					return "", err
				}
				t.Namespace, t.Name, t.Endpoints = pod.Namespace, pod.Name, []Endpoint{ep}
				return cmp.Or(proto, trace.TCP), nil
			}
		}
	}
	return cmp.Or(proto, trace.TCP), nil
}

// nodePortTarget resolves node/NAME:PORT to the node's internal address
// and to the endpoints of the service of the namespace (or, if the user
// may list them, of any namespace) that has the node port.
func (r *resolver) nodePortTarget(ctx context.Context, t *Target, port uint16) error {
	node, err := r.kube.CoreV1().Nodes().Get(ctx, t.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return invalidf("node %q not found", t.Name)
	}
	if err != nil {
		return apiError(err, "get", "nodes", "")
	}
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() && a.Type == corev1.NodeInternalIP {
			t.Address = ip.String()
			break
		}
	}
	if t.Address == "" {
		return invalidf("node %s has no internal IPv4 address", t.Name)
	}
	return r.nodePortEndpoints(ctx, t, port)
}

// nodePortEndpoints sets the endpoints of the service of the namespace
// (or, if the user may list them, of any namespace) that has the node port.
func (r *resolver) nodePortEndpoints(ctx context.Context, t *Target, port uint16) error {
	for _, ns := range []string{r.namespace, metav1.NamespaceAll} {
		svcs, err := r.kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range svcs.Items {
			svc := &svcs.Items[i]
			for _, sp := range svc.Spec.Ports {
				if sp.NodePort == int32(port) {
					t.Namespace = svc.Namespace
					t.Endpoints, err = r.endpoints(ctx, svc, sp)
					return err
				}
			}
		}
	}
	return nil
}

// dnsTarget points a DNS target at the cluster DNS service.
func (r *resolver) dnsTarget(ctx context.Context, t *Target) error {
	t.Address, t.Port = DefaultClusterDNS, dnsPort
	svc, err := r.kube.CoreV1().Services(clusterDNSNamespace).Get(ctx, clusterDNSService, metav1.GetOptions{})
	if err != nil {
		return nil // not allowed to look: the usual address, endpoints unknown
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Port == dnsPort && sp.Protocol == corev1.ProtocolUDP {
			t.Address = svc.Spec.ClusterIP
			eps, err := r.endpoints(ctx, svc, sp)
			if err == nil {
				t.Endpoints = eps
			}
		}
	}
	return nil
}

// involvedNodes lists the nodes a trace needs agents on: the source's
// node first, then the target node of a node port, then the nodes of the
// endpoints.
func involvedNodes(sourceNode string, t Target) []string {
	nodes := []string{sourceNode}
	if t.Kind == TargetNodePort && t.Name != sourceNode {
		nodes = append(nodes, t.Name)
	}
	var others []string
	for _, e := range t.Endpoints {
		if e.Node != "" && !slices.Contains(nodes, e.Node) {
			others = append(others, e.Node)
		}
	}
	slices.Sort(others)
	return append(nodes, slices.Compact(others)...)
}
