package servicenat

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Snapshot is the API state the rules are built from: every Service and
// EndpointSlice the node should proxy. The objects are only read.
type Snapshot struct {
	Services       []*v1.Service
	EndpointSlices []*discovery.EndpointSlice
}

// defaultStickySeconds is the API server's default for
// sessionAffinityConfig.clientIP.timeoutSeconds (three hours).
const defaultStickySeconds = 10800

// servicePortName identifies one port of a Service, as endpoints refer to it:
// by the port's name and protocol.
type servicePortName struct {
	types.NamespacedName
	port     string
	protocol v1.Protocol
}

// String formats n as kube-proxy does in chain hashes and rule comments:
// "namespace/name:port", or "namespace/name" for an unnamed port.
func (n servicePortName) String() string {
	if n.port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.port
}

// servicePort is one port of a proxied Service, reduced to what the rules
// need.
type servicePort struct {
	name     string // servicePortName.String()
	protocol string // lower case: tcp, udp, sctp
	key      servicePortName

	clusterIP           netip.Addr
	port                int
	nodePort            int
	externalIPs         []netip.Addr
	loadBalancerIPs     []netip.Addr
	sourceRanges        []netip.Prefix
	healthCheckNodePort int
	clientIPAffinity    bool
	stickySeconds       int
	externalPolicyLocal bool
	internalPolicyLocal bool

	clusterChain, localChain, externalChain, firewallChain string
}

// externallyAccessible tells whether the port takes traffic on other
// addresses than its ClusterIP.
func (sp *servicePort) externallyAccessible() bool {
	return sp.nodePort != 0 || len(sp.loadBalancerIPs) > 0 || len(sp.externalIPs) > 0
}

// usesClusterEndpoints tells whether any traffic to the port may go to an
// endpoint on another node.
func (sp *servicePort) usesClusterEndpoints() bool {
	return !sp.internalPolicyLocal || sp.externallyAccessible()
}

// usesLocalEndpoints tells whether some traffic to the port must stay on
// this node.
func (sp *servicePort) usesLocalEndpoints() bool {
	return sp.internalPolicyLocal || (sp.externalPolicyLocal && sp.externallyAccessible())
}

// endpoint is one address:port behind a service port.
type endpoint struct {
	ip          string
	hostPort    string // "ip:port", kube-proxy's endpoint string
	local       bool
	ready       bool
	serving     bool
	terminating bool
	chain       string
}

// model is a Snapshot digested: the proxied service ports grouped by Service
// and the endpoints of each port, sorted as kube-proxy sorts them.
type model struct {
	services  map[types.NamespacedName][]*servicePort
	endpoints map[servicePortName][]*endpoint
	notes     []string
}

// digest turns a Snapshot into a model for the node nodeName. It keeps only
// what an IPv4 kube-proxy would program and records a note for everything it
// leaves out and why.
func (s Snapshot) digest(nodeName string) *model {
	m := &model{
		services:  make(map[types.NamespacedName][]*servicePort, len(s.Services)),
		endpoints: make(map[servicePortName][]*endpoint),
	}
	for _, svc := range s.Services {
		m.addService(svc)
	}
	m.addEndpointSlices(s.EndpointSlices, nodeName)
	return m
}

func (m *model) note(format string, args ...any) {
	m.notes = append(m.notes, fmt.Sprintf(format, args...))
}

// addService adds the ports of one Service, skipping what kube-proxy skips:
// headless and ExternalName Services, and Services without an IPv4 ClusterIP.
func (m *model) addService(svc *v1.Service) {
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		m.note("service %s is of type ExternalName: no rules", nn)
		return
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		m.note("service %s is headless (clusterIP %q): no rules", nn, svc.Spec.ClusterIP)
		return
	case svc.Spec.ClusterIP == "":
		m.note("service %s has no ClusterIP yet: no rules", nn)
		return
	}
	clusterIP, ok := ipv4ClusterIP(svc)
	if !ok {
		m.note("service %s has no IPv4 ClusterIP (clusterIPs %v): ignored, this dataplane is IPv4 only", nn, svc.Spec.ClusterIPs)
		return
	}
	externallyAccessible := svc.Spec.Type == v1.ServiceTypeLoadBalancer || svc.Spec.Type == v1.ServiceTypeNodePort ||
		(svc.Spec.Type == v1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
	externalIPs := m.ipv4Addrs(nn, "externalIP", svc.Spec.ExternalIPs)
	var lbIngress []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == v1.LoadBalancerIPModeVIP) {
			lbIngress = append(lbIngress, ing.IP)
		}
	}
	loadBalancerIPs := m.ipv4Addrs(nn, "load balancer ingress IP", lbIngress)
	sourceRanges := m.ipv4SourceRanges(nn, svc.Spec.LoadBalancerSourceRanges)
	stickySeconds := 0
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		stickySeconds = defaultStickySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			stickySeconds = int(*c.ClientIP.TimeoutSeconds)
		}
	}
	externalPolicyLocal := externallyAccessible && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	healthCheckNodePort := 0
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && externalPolicyLocal {
		healthCheckNodePort = int(svc.Spec.HealthCheckNodePort)
	}

	var ports []*servicePort
	for _, p := range svc.Spec.Ports {
		key := servicePortName{NamespacedName: nn, port: p.Name, protocol: cmp.Or(p.Protocol, v1.ProtocolTCP)}
		name := key.String()
		if p.Port < 1 || p.Port > 65535 {
			m.note("service port %s has invalid port %d: ignored", name, p.Port)
			continue
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			m.note("service port %s has invalid nodePort %d: ignored", name, p.NodePort)
			continue
		}
		protocol := strings.ToLower(string(key.protocol))
		hash := portProtoHash(name, protocol) // of every chain of the port
		sp := &servicePort{
			name:                name,
			protocol:            protocol,
			key:                 key,
			clusterIP:           clusterIP,
			port:                int(p.Port),
			nodePort:            int(p.NodePort),
			externalIPs:         externalIPs,
			loadBalancerIPs:     loadBalancerIPs,
			sourceRanges:        sourceRanges,
			healthCheckNodePort: healthCheckNodePort,
			clientIPAffinity:    svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP,
			stickySeconds:       stickySeconds,
			externalPolicyLocal: externalPolicyLocal,
			internalPolicyLocal: svc.Spec.InternalTrafficPolicy != nil &&
				*svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
			clusterChain:  prefixClusterPolicy + hash,
			localChain:    prefixLocalPolicy + hash,
			externalChain: prefixExternal + hash,
			firewallChain: prefixFirewall + hash,
		}
		ports = append(ports, sp)
	}
	slices.SortFunc(ports, func(a, b *servicePort) int {
		return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.protocol, b.protocol))
	})
	if len(ports) > 0 {
		m.services[nn] = ports
	}
}

// ipv4ClusterIP returns the Service's IPv4 ClusterIP, if it has one.
func ipv4ClusterIP(svc *v1.Service) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if addr, ok := parseIPv4(s); ok {
			return addr, true
		}
	}
	return netip.Addr{}, false
}

// parseIPv4 parses an IPv4 address the way the API server accepts it,
// including the legacy forms with leading zeros.
func parseIPv4(s string) (netip.Addr, bool) {
	if addr, err := netip.ParseAddr(s); err == nil {
		return addr, addr.Is4()
	}
	// Leading zeros ("010.001.002.003") are decimal to the API server, as
	// to the old net.ParseIP.
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}

// ipv4Addrs parses the IPv4 members of a list of addresses, noting the
// others.
func (m *model) ipv4Addrs(nn types.NamespacedName, what string, list []string) []netip.Addr {
	var addrs []netip.Addr
	for _, s := range list {
		addr, ok := parseIPv4(strings.TrimSpace(s))
		if !ok {
			m.note("service %s: %s %q is not IPv4: ignored", nn, what, s)
			continue
		}
		addrs = append(addrs, addr)
	}
	return addrs
}

// ipv4SourceRanges parses loadBalancerSourceRanges. As in kube-proxy, a range
// that admits everything (0.0.0.0/0) disables the filtering.
func (m *model) ipv4SourceRanges(nn types.NamespacedName, list []string) []netip.Prefix {
	var ranges []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		_, ipNet, err := net.ParseCIDR(s)
		if err != nil || ipNet.IP.To4() == nil {
			m.note("service %s: loadBalancerSourceRange %q is not an IPv4 CIDR: ignored", nn, s)
			continue
		}
		prefix, _ := netip.ParsePrefix(ipNet.String())
		if prefix.Bits() == 0 {
			return nil
		}
		ranges = append(ranges, prefix)
	}
	return ranges
}

// addEndpointSlices merges the IPv4 EndpointSlices into per-port endpoint
// lists. As in kube-proxy an endpoint seen in several slices is kept once,
// preferring a copy that is not terminating, and each list is sorted by its
// "ip:port" string.
func (m *model) addEndpointSlices(endpointSlices []*discovery.EndpointSlice, nodeName string) {
	byPort := make(map[servicePortName]map[string]*endpoint)
	for _, slice := range endpointSlices {
		id := slice.Namespace + "/" + slice.Name
		serviceName := slice.Labels[discovery.LabelServiceName]
		if serviceName == "" {
			m.note("EndpointSlice %s has no %s label: ignored", id, discovery.LabelServiceName)
			continue
		}
		if slice.AddressType != discovery.AddressTypeIPv4 {
			m.note("EndpointSlice %s has address type %s: ignored, this dataplane is IPv4 only", id, slice.AddressType)
			continue
		}
		nn := types.NamespacedName{Namespace: slice.Namespace, Name: serviceName}
		for _, port := range slice.Ports {
			if port.Name == nil {
				m.note("EndpointSlice %s has a port without a name: ignored", id)
				continue
			}
			if port.Port == nil || *port.Port < 1 || *port.Port > 65535 {
				m.note("EndpointSlice %s port %q has no valid port number: ignored", id, *port.Name)
				continue
			}
			protocol := v1.ProtocolTCP
			if port.Protocol != nil {
				protocol = *port.Protocol
			}
			key := servicePortName{NamespacedName: nn, port: *port.Name, protocol: protocol}
			set := byPort[key]
			if set == nil {
				set = make(map[string]*endpoint)
				byPort[key] = set
			}
			m.addEndpoints(set, key, int(*port.Port), slice, nodeName)
		}
	}
	for key, set := range byPort {
		eps := make([]*endpoint, 0, len(set))
		for _, ep := range set {
			eps = append(eps, ep)
		}
		slices.SortFunc(eps, func(a, b *endpoint) int { return cmp.Compare(a.hostPort, b.hostPort) })
		m.endpoints[key] = eps
	}
}

func (m *model) addEndpoints(set map[string]*endpoint, key servicePortName, port int, slice *discovery.EndpointSlice, nodeName string) {
	name := key.String()
	protocol := strings.ToLower(string(key.protocol))
	for _, e := range slice.Endpoints {
		if len(e.Addresses) == 0 {
			m.note("EndpointSlice %s/%s has an endpoint without addresses: ignored", slice.Namespace, slice.Name)
			continue
		}
		addr, ok := parseIPv4(e.Addresses[0])
		if !ok {
			m.note("EndpointSlice %s/%s endpoint %q is not IPv4: ignored", slice.Namespace, slice.Name, e.Addresses[0])
			continue
		}
		ep := &endpoint{
			ip:          addr.String(),
			hostPort:    netip.AddrPortFrom(addr, uint16(port)).String(),
			local:       nodeName != "" && e.NodeName != nil && *e.NodeName == nodeName,
			ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		}
		if _, seen := set[ep.hostPort]; seen && ep.terminating {
			continue
		}
		ep.chain = EndpointChain(name, protocol, ep.hostPort)
		set[ep.hostPort] = ep
	}
}

// categorize picks the endpoints of a port as kube-proxy does (topology
// hints aside): cluster holds the ready endpoints, or if there are none the
// serving and terminating ones; local does the same among this node's
// endpoints; reachable is every endpoint some rule may DNAT to.
func categorize(eps []*endpoint, sp *servicePort) (cluster, local, reachable []*endpoint, hasAny bool) {
	if len(eps) == 0 {
		return nil, nil, nil, false
	}
	if sp.usesClusterEndpoints() {
		cluster = filterEndpoints(eps, func(ep *endpoint) bool { return ep.ready })
		if len(cluster) == 0 {
			cluster = filterEndpoints(eps, func(ep *endpoint) bool { return ep.serving && ep.terminating })
		}
		hasAny = len(cluster) > 0
	}
	if !sp.usesLocalEndpoints() {
		return cluster, nil, cluster, hasAny
	}
	var localReady, localServingTerminating bool
	for _, ep := range eps {
		switch {
		case ep.ready:
			hasAny = true
			localReady = localReady || ep.local
		case ep.serving && ep.terminating:
			hasAny = true
			localServingTerminating = localServingTerminating || ep.local
		}
	}
	useServingTerminating := false
	switch {
	case localReady:
		local = filterEndpoints(eps, func(ep *endpoint) bool { return ep.local && ep.ready })
	case localServingTerminating:
		useServingTerminating = true
		local = filterEndpoints(eps, func(ep *endpoint) bool { return ep.local && ep.serving && ep.terminating })
	}
	if !sp.usesClusterEndpoints() {
		return cluster, local, local, hasAny
	}
	if !useServingTerminating {
		return cluster, local, cluster, hasAny
	}
	// The local endpoints are terminating ones that the cluster list lacks.
	reachable = append(slices.Clone(cluster), local...)
	slices.SortFunc(reachable, func(a, b *endpoint) int { return cmp.Compare(a.hostPort, b.hostPort) })
	reachable = slices.CompactFunc(reachable, func(a, b *endpoint) bool { return a.hostPort == b.hostPort })
	return cluster, local, reachable, hasAny
}

func filterEndpoints(eps []*endpoint, keep func(*endpoint) bool) []*endpoint {
	var kept []*endpoint
	for _, ep := range eps {
		if keep(ep) {
			kept = append(kept, ep)
		}
	}
	return kept
}
