package dns

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/miekg/dns"
)

// SchemaVersion is the version of the Kubernetes DNS schema the zone
// implements, served as TXT at dns-version.<zone>.
const SchemaVersion = "1.1.0"

// answer is what the zone says about one question.
type answer struct {
	rcode  int
	answer []dns.RR
	extra  []dns.RR
	// cname is the target of an ExternalName CNAME still to be resolved
	// for a question of another type.
	cname string
}

// zone answers the names of the cluster domain from the Cluster, following
// the Kubernetes DNS-based service discovery specification, and the PTR
// records of Service ClusterIPs and headless endpoints.
type zone struct {
	origin  string // lower-case, fully qualified: "cluster.local."
	ttl     uint32
	cluster *Cluster
}

// contains reports whether name is in the zone.
func (z *zone) contains(name string) bool {
	return dns.IsSubDomain(z.origin, strings.ToLower(name))
}

// lookup answers a question for a name inside the zone. qname is used as
// asked for owner names, so that a client sees its own spelling back.
func (z *zone) lookup(qname string, qtype uint16) answer {
	rel := strings.TrimSuffix(strings.ToLower(qname), z.origin)
	labels := dns.SplitDomainName(rel)
	n := len(labels)
	switch {
	case n == 0:
		if qtype == dns.TypeSOA {
			return answer{answer: []dns.RR{z.soa()}}
		}
		return z.noData()
	case n == 1 && labels[0] == "dns-version":
		if qtype == dns.TypeTXT {
			return answer{answer: []dns.RR{&dns.TXT{Hdr: z.header(qname, dns.TypeTXT), Txt: []string{SchemaVersion}}}}
		}
		return z.noData()
	case labels[n-1] == "svc":
		return z.lookupService(qname, qtype, labels[:n-1])
	case labels[n-1] == "pod":
		return z.lookupPod(qname, qtype, labels[:n-1])
	}
	return z.nxDomain()
}

// lookupService answers names under svc.<zone>; labels are the labels
// left of "svc", leftmost first.
func (z *zone) lookupService(qname string, qtype uint16, labels []string) answer {
	n := len(labels)
	switch {
	case n == 0:
		return z.noData()
	case n == 1:
		return z.namespaceNode(labels[0])
	}
	svc := z.cluster.service(labels[n-1], labels[n-2])
	if svc == nil {
		return z.nxDomain()
	}
	switch n {
	case 2:
		return z.serviceRecords(qname, qtype, svc)
	case 3:
		if proto, ok := strings.CutPrefix(labels[0], "_"); ok {
			return z.protocolNode(svc, proto)
		}
		return z.hostnameRecords(qname, qtype, svc, labels[0])
	case 4:
		port, ok1 := strings.CutPrefix(labels[0], "_")
		proto, ok2 := strings.CutPrefix(labels[1], "_")
		if ok1 && ok2 {
			return z.srvRecords(qname, qtype, svc, port, proto)
		}
	}
	return z.nxDomain()
}

// namespaceNode answers <ns>.svc.<zone> and <ns>.pod.<zone>: names with no
// records of their own that exist while the namespace does.
func (z *zone) namespaceNode(ns string) answer {
	if z.cluster.namespaceExists(ns) {
		return z.noData()
	}
	return z.nxDomain()
}

// serviceRecords answers <service>.<ns>.svc.<zone>: the ClusterIP, the
// ready endpoints of a headless Service, or the CNAME of an ExternalName.
func (z *zone) serviceRecords(qname string, qtype uint16, svc *corev1.Service) answer {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		target, ok := externalName(svc)
		if !ok {
			return z.nxDomain()
		}
		a := answer{answer: []dns.RR{&dns.CNAME{Hdr: z.header(qname, dns.TypeCNAME), Target: target}}}
		if qtype != dns.TypeCNAME {
			a.cname = target
		}
		return a
	}
	if isHeadless(svc) {
		eps := z.cluster.readyEndpoints(svc)
		if len(eps) == 0 {
			return z.nxDomain()
		}
		if qtype != dns.TypeA {
			return z.noData()
		}
		var a answer
		for _, ep := range eps {
			a.answer = append(a.answer, z.a(qname, ep.addr))
		}
		return a
	}
	if svc.Spec.ClusterIP == "" {
		return z.nxDomain()
	}
	if addr, ok := clusterIPv4(svc); ok && qtype == dns.TypeA {
		return answer{answer: []dns.RR{z.a(qname, addr)}}
	}
	return z.noData()
}

// protocolNode answers _<proto>.<service>.<ns>.svc.<zone>, which exists
// while the Service has a named port of that protocol.
func (z *zone) protocolNode(svc *corev1.Service, proto string) answer {
	for _, p := range svc.Spec.Ports {
		if p.Name != "" && strings.EqualFold(string(p.Protocol), proto) {
			return z.noData()
		}
	}
	return z.nxDomain()
}

// hostnameRecords answers <hostname>.<service>.<ns>.svc.<zone> for the
// ready endpoints of a headless Service.
func (z *zone) hostnameRecords(qname string, qtype uint16, svc *corev1.Service, hostname string) answer {
	if !isHeadless(svc) {
		return z.nxDomain()
	}
	var a answer
	for _, ep := range z.cluster.readyEndpoints(svc) {
		if ep.hostname == hostname {
			a.answer = append(a.answer, z.a(qname, ep.addr))
		}
	}
	switch {
	case len(a.answer) == 0:
		return z.nxDomain()
	case qtype != dns.TypeA:
		return z.noData()
	}
	return a
}

// srvRecords answers _<port>._<proto>.<service>.<ns>.svc.<zone>: one SRV
// for the ClusterIP, or one per ready endpoint of a headless Service with
// the endpoint's port, with the targets' A records as additional data.
func (z *zone) srvRecords(qname string, qtype uint16, svc *corev1.Service, port, proto string) answer {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == "" {
		return z.nxDomain()
	}
	var a answer
	if isHeadless(svc) {
		for _, ep := range z.cluster.readyEndpoints(svc) {
			for _, p := range ep.ports {
				if p.Name == nil || p.Port == nil || *p.Name != port || p.Protocol == nil || !strings.EqualFold(string(*p.Protocol), proto) {
					continue
				}
				target := ep.hostname + "." + svc.Name + "." + svc.Namespace + ".svc." + z.origin
				a.answer = append(a.answer, z.srv(qname, uint16(*p.Port), target))
				a.extra = append(a.extra, z.a(target, ep.addr))
			}
		}
	} else {
		target := svc.Name + "." + svc.Namespace + ".svc." + z.origin
		addr, hasIPv4 := clusterIPv4(svc)
		for _, p := range svc.Spec.Ports {
			if p.Name != port || !strings.EqualFold(string(p.Protocol), proto) {
				continue
			}
			a.answer = append(a.answer, z.srv(qname, uint16(p.Port), target))
			if hasIPv4 {
				a.extra = append(a.extra, z.a(target, addr))
			}
		}
	}
	switch {
	case len(a.answer) == 0:
		return z.nxDomain()
	case qtype != dns.TypeSRV:
		return z.noData()
	}
	// RFC 2782: equal priority, the weight shared out between the targets.
	for _, rr := range a.answer {
		rr.(*dns.SRV).Weight = uint16(max(1, 100/len(a.answer)))
	}
	return a
}

// lookupPod answers <a-b-c-d>.<ns>.pod.<zone> as CoreDNS's "pods insecure"
// does: any well-formed address in the name is its own answer, in any
// existing namespace.
func (z *zone) lookupPod(qname string, qtype uint16, labels []string) answer {
	switch len(labels) {
	case 0:
		return z.noData()
	case 1:
		return z.namespaceNode(labels[0])
	case 2:
	default:
		return z.nxDomain()
	}
	if !z.cluster.namespaceExists(labels[1]) {
		return z.nxDomain()
	}
	name := labels[0]
	text := strings.ReplaceAll(name, "-", ":")
	if strings.Count(name, "-") == 3 && !strings.Contains(name, "--") {
		text = strings.ReplaceAll(name, "-", ".")
	}
	addr, err := netip.ParseAddr(text)
	if err != nil || addr.Zone() != "" {
		return z.nxDomain()
	}
	switch {
	case addr.Is4() && qtype == dns.TypeA:
		return answer{answer: []dns.RR{z.a(qname, addr)}}
	case addr.Is6() && qtype == dns.TypeAAAA:
		return answer{answer: []dns.RR{&dns.AAAA{Hdr: z.header(qname, dns.TypeAAAA), AAAA: addr.AsSlice()}}}
	}
	return z.noData()
}

// reverse answers a PTR question for an IPv4 address that is a Service
// ClusterIP or a headless Service's ready endpoint. ok is false for any
// other question, which the server forwards.
func (z *zone) reverse(qname string, qtype uint16) (a answer, ok bool) {
	if qtype != dns.TypePTR {
		return answer{}, false
	}
	addr, ok := reverseIPv4(qname)
	if !ok {
		return answer{}, false
	}
	for _, svc := range z.cluster.servicesWithClusterIP(addr) {
		a.answer = append(a.answer, z.ptr(qname, svc.Name+"."+svc.Namespace))
	}
	for _, name := range z.cluster.headlessEndpointsWithAddress(addr) {
		a.answer = append(a.answer, z.ptr(qname, name))
	}
	return a, len(a.answer) > 0
}

// reverseIPv4 parses "<d>.<c>.<b>.<a>.in-addr.arpa." into a.b.c.d.
func reverseIPv4(qname string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(strings.ToLower(qname), ".in-addr.arpa.")
	if !ok {
		return netip.Addr{}, false
	}
	octets := strings.Split(rest, ".")
	if len(octets) != 4 {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(octets[3] + "." + octets[2] + "." + octets[1] + "." + octets[0])
	return addr, err == nil
}

// header is the header of a zone record owned by name.
func (z *zone) header(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: z.ttl}
}

func (z *zone) a(name string, addr netip.Addr) dns.RR {
	return &dns.A{Hdr: z.header(name, dns.TypeA), A: addr.AsSlice()}
}

func (z *zone) srv(name string, port uint16, target string) dns.RR {
	return &dns.SRV{Hdr: z.header(name, dns.TypeSRV), Port: port, Target: target}
}

func (z *zone) ptr(name, serviceName string) dns.RR {
	return &dns.PTR{Hdr: z.header(name, dns.TypePTR), Ptr: serviceName + ".svc." + z.origin}
}

// soa is the zone's SOA record; its minimum TTL is the zone TTL, so that
// resolvers cache a denial no longer than a record.
func (z *zone) soa() dns.RR {
	return &dns.SOA{
		Hdr:     z.header(z.origin, dns.TypeSOA),
		Ns:      "ns.dns." + z.origin,
		Mbox:    "hostmaster." + z.origin,
		Serial:  1,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  z.ttl,
	}
}

// nxDomain is the answer for a name the zone does not have.
func (z *zone) nxDomain() answer {
	return answer{rcode: dns.RcodeNameError}
}

// noData is the answer for a name that exists without records of the
// asked type: NOERROR with no answer; the server adds the SOA.
func (z *zone) noData() answer {
	return answer{}
}
