package cluster

import (
	"net/netip"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// SourceRef is a SOURCE as the user gave it: a pod of the namespace, or an
// address outside the cluster.
type SourceRef struct {
	Given string
	// Pod is the source pod's name; empty for an address.
	Pod string
	// Addr is the address, outside the cluster, that the traffic comes
	// from; the zero Addr for a pod.
	Addr netip.Addr
}

// Outside reports whether the source is an address outside the cluster.
func (s SourceRef) Outside() bool { return s.Addr.IsValid() }

// ParseSource parses the SOURCE of `kubectl nettrace SOURCE TARGET`: a pod
// name, "pod/NAME" or "po/NAME", or "ip/A.B.C.D", an address outside the
// cluster whose own traffic a live trace follows.
func ParseSource(s string) (SourceRef, error) {
	ref := SourceRef{Given: s, Pod: s}
	if kind, rest, ok := strings.Cut(s, "/"); ok {
		switch {
		case kind == "ip":
			return ref, parseOutsideSource(&ref, rest)
		case !isPodKind(kind):
			return ref, invalidf("source %q: a trace starts from a pod, NAME or pod/NAME, or from an address outside the cluster, ip/A.B.C.D", s)
		}
		ref.Pod = rest
	}
	if errs := validation.IsDNS1123Subdomain(ref.Pod); len(errs) > 0 {
		return ref, invalidf("source %q: not a pod name: %s", s, strings.Join(errs, "; "))
	}
	return ref, nil
}

// parseOutsideSource parses the address of an ip/A.B.C.D source into ref.
func parseOutsideSource(ref *SourceRef, s string) error {
	ref.Pod = ""
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return invalidf("source %q: bad IP %q", ref.Given, s)
	case !a.Is4():
		return invalidf("source %q: IPv6 is not supported yet", ref.Given)
	case !a.IsGlobalUnicast():
		return invalidf("source %q: %s cannot be the source of a flow", ref.Given, a)
	}
	ref.Addr = a
	return nil
}

// TargetRef is a TARGET as the user gave it, before it is resolved.
type TargetRef struct {
	Given string
	Kind  TargetKind
	// Name is the service, pod or node name, or the DNS name.
	Name string
	// Addr is the address of an ip or external target.
	Addr netip.Addr
	// Port is the port given, if any; PortName a service port's name.
	Port     uint16
	PortName string
}

// ParseTarget parses the TARGET of `kubectl nettrace SOURCE TARGET`:
//
//	svc-b, svc-b:80, svc/b, svc/b:http   a service in the namespace, with a port number or name
//	pod/x, pod/x:8080                    a pod in the namespace
//	10.96.0.10:53, 172.16.1.5            an address: a pod's, a service's or another
//	node/NAME:NODEPORT                   a node port of a node
//	web.example.com:443                  a DNS name, looked up through the cluster DNS first
//	external:IP:PORT                     an address outside the cluster
func ParseTarget(s string) (TargetRef, error) {
	ref := TargetRef{Given: s}
	if rest, ok := strings.CutPrefix(s, "external:"); ok {
		ref.Kind = TargetExternal
		return ref, parseAddrTarget(&ref, rest)
	}
	if strings.Count(s, ":") > 1 || strings.HasPrefix(s, "[") {
		return ref, invalidf("target %q: IPv6 is not supported yet", s)
	}
	if kind, rest, ok := strings.Cut(s, "/"); ok {
		switch {
		case kind == "svc" || kind == "service" || kind == "services":
			ref.Kind = TargetService
		case isPodKind(kind):
			ref.Kind = TargetPod
		case kind == "node" || kind == "no" || kind == "nodes":
			ref.Kind = TargetNodePort
		default:
			return ref, invalidf("target %q: unknown kind %q: want svc/, pod/ or node/", s, kind)
		}
		return ref, parseNamedTarget(&ref, rest)
	}
	host, _, _ := strings.Cut(s, ":")
	if _, err := netip.ParseAddr(host); err == nil {
		ref.Kind = TargetIP
		return ref, parseAddrTarget(&ref, s)
	}
	ref.Kind = TargetService
	if strings.Contains(host, ".") {
		ref.Kind = TargetDNS
	}
	return ref, parseNamedTarget(&ref, s)
}

// parseNamedTarget parses NAME[:PORT] into ref, whose Kind is set.
func parseNamedTarget(ref *TargetRef, s string) error {
	name, port, hasPort := strings.Cut(s, ":")
	ref.Name = name
	switch ref.Kind {
	case TargetDNS:
		ref.Name = strings.TrimSuffix(name, ".")
		if errs := validation.IsDNS1123Subdomain(strings.ToLower(ref.Name)); len(errs) > 0 {
			return invalidf("target %q: not a DNS name: %s", ref.Given, strings.Join(errs, "; "))
		}
	default:
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			return invalidf("target %q: not a %s name: %s", ref.Given, ref.Kind, strings.Join(errs, "; "))
		}
	}
	if !hasPort {
		if ref.Kind == TargetNodePort {
			return invalidf("target %q: a node port needs its number: node/NAME:PORT", ref.Given)
		}
		return nil
	}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && n > 0 {
		ref.Port = uint16(n)
		return nil
	}
	if ref.Kind == TargetService && len(validation.IsValidPortName(port)) == 0 {
		ref.PortName = port
		return nil
	}
	return invalidf("target %q: bad port %q: want 1-65535", ref.Given, port)
}

// parseAddrTarget parses IP[:PORT] into ref.
func parseAddrTarget(ref *TargetRef, s string) error {
	host, port, hasPort := strings.Cut(s, ":")
	a, err := netip.ParseAddr(host)
	switch {
	case err == nil && a.Is6() || strings.Contains(port, ":") || strings.HasPrefix(s, "["):
		return invalidf("target %q: IPv6 is not supported yet", ref.Given)
	case err != nil:
		return invalidf("target %q: bad IP %q", ref.Given, host)
	}
	ref.Addr = a
	if !hasPort {
		return nil
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return invalidf("target %q: bad port %q: want 1-65535", ref.Given, port)
	}
	ref.Port = uint16(n)
	return nil
}

func isPodKind(kind string) bool { return kind == "pod" || kind == "po" || kind == "pods" }
