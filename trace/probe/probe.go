// Package probe injects one test packet from inside the network namespace it
// is used in, with the ordinary socket API: a TCP connection attempt, a UDP
// datagram, an ICMP echo or a DNS query. Plan picks a source port (or echo
// identifier) that no socket or conntrack entry uses and reserves it, so that
// the flow is known, and the event sources can be armed for it, before
// anything is sent; Send sends and reports what came back.
package probe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Kind is what a probe sends.
type Kind string

// The kinds of probe.
const (
	// TCP opens a connection: a SYN, answered by a SYN-ACK or a RST.
	TCP Kind = "tcp"
	// UDP sends one datagram and waits for a reply or an ICMP error.
	UDP Kind = "udp"
	// ICMP sends one echo request.
	ICMP Kind = "icmp"
	// DNS sends one query over UDP.
	DNS Kind = "dns"
)

// Defaults for the fields of a Spec left at zero.
const (
	DefaultTimeout = 2 * time.Second
	DefaultDNSPort = 53
)

// defaultPayload is what a UDP or ICMP probe carries when Spec.Payload is empty.
var defaultPayload = []byte("kubectl-nettrace probe")

// Spec says what to send. Probes are IPv4.
type Spec struct {
	Kind Kind
	// Src is the source address; when it is not set, the address the
	// route to Dst prefers is used.
	Src netip.Addr
	Dst netip.Addr
	// DstPort is the destination port of a TCP or UDP probe; a DNS probe
	// defaults to 53.
	DstPort uint16
	// Payload is the data of a UDP datagram or echo request.
	Payload []byte
	// Question and QType are the name and type a DNS probe asks for;
	// QType defaults to A.
	Question string
	QType    uint16
	// Timeout bounds the wait for an answer; it defaults to DefaultTimeout.
	Timeout time.Duration
	// UniqueIn lists other network namespaces, such as the node's, whose
	// sockets and conntrack entries must not use the chosen port either.
	UniqueIn []string
}

// Probe is a planned probe: its flow is fixed and its source port
// reserved. Send it once, or Close it.
type Probe struct {
	spec Spec
	flow trace.Flow
	// fd is the bound TCP or UDP socket; icmp is the raw ICMP socket.
	fd   int
	icmp net.PacketConn
}

// Plan checks spec, chooses the source address and a source port (for
// ICMP, an echo identifier) in 40000-49999 that is free in the current
// netns and in spec.UniqueIn, and reserves it by binding the probe's socket
// in the current netns. Send may then run anywhere.
func Plan(spec Spec) (*Probe, error) {
	spec, proto, err := withDefaults(spec)
	if err != nil {
		return nil, err
	}
	if !spec.Src.IsValid() {
		if spec.Src, err = preferredSource(spec.Dst); err != nil {
			return nil, err
		}
	}
	p := &Probe{spec: spec, fd: -1}
	if err := p.reserve(proto); err != nil {
		return nil, err
	}
	return p, nil
}

// withDefaults fills the defaults in and returns the flow's protocol.
func withDefaults(spec Spec) (Spec, trace.Proto, error) {
	if !spec.Dst.Is4() || (spec.Src.IsValid() && !spec.Src.Is4()) {
		return spec, "", fmt.Errorf("probe from %s to %s: probes need IPv4 addresses", spec.Src, spec.Dst)
	}
	if spec.Timeout <= 0 {
		spec.Timeout = DefaultTimeout
	}
	if len(spec.Payload) == 0 {
		spec.Payload = defaultPayload
	}
	switch spec.Kind {
	case TCP:
		if spec.DstPort == 0 {
			return spec, "", errors.New("a TCP probe needs a destination port")
		}
		return spec, trace.TCP, nil
	case UDP:
		if spec.DstPort == 0 {
			return spec, "", errors.New("a UDP probe needs a destination port")
		}
		return spec, trace.UDP, nil
	case DNS:
		if spec.Question == "" {
			return spec, "", errors.New("a DNS probe needs a question")
		}
		if spec.DstPort == 0 {
			spec.DstPort = DefaultDNSPort
		}
		if spec.QType == 0 {
			spec.QType = dns.TypeA
		}
		return spec, trace.UDP, nil
	case ICMP:
		spec.DstPort = 0
		return spec, trace.ICMP, nil
	}
	return spec, "", fmt.Errorf("unknown probe kind %q: want tcp, udp, icmp or dns", spec.Kind)
}

// preferredSource is the source address the current netns's route to dst
// prefers.
func preferredSource(dst netip.Addr) (netip.Addr, error) {
	routes, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("looking up the route to %s for a source address: %w", dst, err)
	}
	if len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route to %s to take a source address from", dst)
	}
	src, ok := netip.AddrFromSlice(routes[0].Src)
	if !ok {
		return netip.Addr{}, fmt.Errorf("the route to %s has no source address", dst)
	}
	return src.Unmap(), nil
}

// Flow is the flow the probe will send: its source port, or for ICMP its
// echo identifier, is the one Plan reserved.
func (p *Probe) Flow() trace.Flow { return p.flow }

// Close releases the reserved port of a probe that will not be sent.
func (p *Probe) Close() error {
	var err error
	if p.fd >= 0 {
		err = closeFD(p.fd)
		p.fd = -1
	}
	if p.icmp != nil {
		err = errors.Join(err, p.icmp.Close())
		p.icmp = nil
	}
	return err
}
