package loadbalancer

import (
	"bytes"
	"crypto/sha256"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// ExcludeLabel on a Node keeps it from announcing any address, as it keeps
// the node out of a cloud load balancer's backends.
const ExcludeLabel = v1.LabelNodeExcludeBalancers

// Announcer returns the node that announces addr among the eligible nodes:
// the first in the order of sha256(nodeName + "#" + addr), as MetalLB's layer 2
// mode chooses. Every speaker computes the same answer from the same API
// state, so exactly one of them answers ARP for addr. It returns false when no
// node is eligible.
func Announcer(addr netip.Addr, eligible []string) (string, bool) {
	if len(eligible) == 0 {
		return "", false
	}
	key := func(node string) [sha256.Size]byte { return sha256.Sum256([]byte(node + "#" + addr.String())) }
	return slices.MinFunc(eligible, func(a, b string) int {
		ka, kb := key(a), key(b)
		return bytes.Compare(ka[:], kb[:])
	}), true
}

// EligibleNodes returns, sorted by name, the nodes that may announce the
// addresses of svc, of the nodes given (a Speaker gives those whose speaker
// is alive): the Ready nodes without ExcludeLabel and, when the service's
// externalTrafficPolicy is Local, only those with a ready endpoint of the
// service per its EndpointSlices (slices of other services are ignored).
func EligibleNodes(svc *v1.Service, nodes []*v1.Node, endpointSlices []*discovery.EndpointSlice) []string {
	var local map[string]bool
	if svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
		local = nodesWithReadyEndpoints(svc, endpointSlices)
	}
	var eligible []string
	for _, node := range nodes {
		if !nodeReady(node) {
			continue
		}
		if _, excluded := node.Labels[ExcludeLabel]; excluded {
			continue
		}
		if local != nil && !local[node.Name] {
			continue
		}
		eligible = append(eligible, node.Name)
	}
	slices.Sort(eligible)
	return eligible
}

// nodeReady reports whether the node's Ready condition is True.
func nodeReady(node *v1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// nodesWithReadyEndpoints returns the nodes running a ready endpoint of svc.
// A nil Ready condition means ready, as the EndpointSlice API defines it.
// The result is never nil, so that "no node" differs from "no filter".
func nodesWithReadyEndpoints(svc *v1.Service, endpointSlices []*discovery.EndpointSlice) map[string]bool {
	nodes := make(map[string]bool)
	for _, slice := range endpointSlices {
		if slice.Namespace != svc.Namespace || slice.Labels[discovery.LabelServiceName] != svc.Name {
			continue
		}
		for _, ep := range slice.Endpoints {
			if ep.NodeName == nil || (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) {
				continue
			}
			nodes[*ep.NodeName] = true
		}
	}
	return nodes
}

// managed reports whether svc is a LoadBalancer service of class, the
// empty class standing for services without spec.loadBalancerClass.
func managed(svc *v1.Service, class string) bool {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		return false
	}
	if svc.Spec.LoadBalancerClass == nil {
		return class == ""
	}
	return *svc.Spec.LoadBalancerClass == class
}

// vipAddrs returns the addresses of the service's status that are virtual
// IPs (ipMode VIP or unset), which the node's service NAT catches.
func vipAddrs(svc *v1.Service) []netip.Addr {
	var addrs []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP {
			continue
		}
		if addr, err := netip.ParseAddr(ing.IP); err == nil {
			addrs = append(addrs, addr.Unmap())
		}
	}
	return addrs
}
