// Package trace is the model of a traced packet path: the flow being
// followed, the hops observed on each node, and the verdict at the end. The
// event sources (trace/netfilter, trace/conntrack, capture/ and trace/route)
// produce Hops; trace/correlate orders them into a Path. The JSON form of
// Path is the versioned schema described in docs/schema.md.
package trace

import (
	"fmt"
	"net/netip"
	"time"
)

// SchemaVersion names the JSON schema of Path. It changes when a field is
// renamed or removed; new optional fields keep it.
const SchemaVersion = "nettrace/v1"

// Proto is the transport protocol of a flow.
type Proto string

// The protocols a flow can have.
const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	ICMP Proto = "icmp"
)

// Number returns the IP protocol number of p, or 0 when p is unknown.
func (p Proto) Number() uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case ICMP:
		return 1
	}
	return 0
}

// ParseProto parses "tcp", "udp" or "icmp".
func ParseProto(s string) (Proto, error) {
	switch p := Proto(s); p {
	case TCP, UDP, ICMP:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q: want tcp, udp or icmp", s)
}

// Flow is one direction of a connection, as the sender addresses it. For
// ICMP echo, SrcPort holds the echo identifier and DstPort is zero.
type Flow struct {
	Proto   Proto      `json:"proto"`
	Src     netip.Addr `json:"src"`
	SrcPort uint16     `json:"srcPort,omitempty"`
	Dst     netip.Addr `json:"dst"`
	DstPort uint16     `json:"dstPort,omitempty"`
}

// Reverse returns the flow of the answer: source and destination swapped.
// An ICMP echo reply keeps the request's identifier.
func (f Flow) Reverse() Flow {
	if f.Proto == ICMP {
		return Flow{Proto: ICMP, Src: f.Dst, SrcPort: f.SrcPort, Dst: f.Src}
	}
	return Flow{Proto: f.Proto, Src: f.Dst, SrcPort: f.DstPort, Dst: f.Src, DstPort: f.SrcPort}
}

// String formats f as "tcp 172.16.158.16:40001 > 10.96.143.238:80".
func (f Flow) String() string {
	if f.Proto == ICMP {
		return fmt.Sprintf("icmp %s > %s id %d", f.Src, f.Dst, f.SrcPort)
	}
	return fmt.Sprintf("%s %s > %s", f.Proto,
		netip.AddrPortFrom(f.Src, f.SrcPort), netip.AddrPortFrom(f.Dst, f.DstPort))
}

// Direction says whether a hop belongs to the request or to its reply.
type Direction string

// The two directions of a traced connection.
const (
	Request Direction = "request"
	Reply   Direction = "reply"
)

// Way says whether a packet came in on an interface or went out of it.
type Way string

// The ways a capture sees a packet.
const (
	WayIn  Way = "in"
	WayOut Way = "out"
)

// HopKind says what a hop is.
type HopKind string

// The kinds of hop, roughly in the order a packet meets them.
const (
	// HopInterface is a packet seen on an interface by a capture.
	HopInterface HopKind = "interface"
	// HopARP is an ARP request or reply seen on an interface.
	HopARP HopKind = "arp"
	// HopDNS is a DNS query or answer seen on an interface.
	HopDNS HopKind = "dns"
	// HopRule is a netfilter rule, chain policy or return that the packet hit.
	HopRule HopKind = "rule"
	// HopNAT is an address rewrite recorded by conntrack.
	HopNAT HopKind = "nat"
	// HopRoute is a FIB lookup made by the tracer: a lookup, not an observation.
	HopRoute HopKind = "route"
	// HopEncap is a packet wrapped in an outer header (IPIP, VXLAN).
	HopEncap HopKind = "encap"
	// HopDecap is the outer header removed again.
	HopDecap HopKind = "decap"
	// HopDeliver is the packet handed to its destination's interface.
	HopDeliver HopKind = "deliver"
	// HopDrop is the packet dropped or rejected.
	HopDrop HopKind = "drop"
)

// Hop is one thing that happened to the traced packet, on one node.
// Exactly one of the detail fields (Rule, NAT, Route, ARP, Tunnel, DNS) is
// set when the kind needs it; Packet holds the headers as they were seen.
type Hop struct {
	Time      time.Time `json:"time"`
	Node      string    `json:"node"`
	Netns     string    `json:"netns,omitempty"`
	Kind      HopKind   `json:"kind"`
	Direction Direction `json:"direction,omitempty"`
	// Iface is the interface the hop happened on, when known.
	Iface string `json:"iface,omitempty"`
	// Way says whether a capture saw the packet come in on Iface (WayIn)
	// or go out of it (WayOut).
	Way Way `json:"way,omitempty"`
	// Source names the event source: nflog, nftrace, conntrack, capture, fib or probe.
	Source string  `json:"source"`
	Packet *Packet `json:"packet,omitempty"`
	Rule   *Rule   `json:"rule,omitempty"`
	NAT    *NAT    `json:"nat,omitempty"`
	Route  *Route  `json:"route,omitempty"`
	ARP    *ARP    `json:"arp,omitempty"`
	Tunnel *Tunnel `json:"tunnel,omitempty"`
	DNS    *DNS    `json:"dns,omitempty"`
	// Note is a short human annotation, such as "proxy ARP" or "delivered to default/server".
	Note string `json:"note,omitempty"`
}

// Packet is a summary of the headers of one packet.
type Packet struct {
	Proto    Proto      `json:"proto,omitempty"`
	Src      netip.Addr `json:"src"`
	SrcPort  uint16     `json:"srcPort,omitempty"`
	Dst      netip.Addr `json:"dst"`
	DstPort  uint16     `json:"dstPort,omitempty"`
	Length   int        `json:"length,omitempty"`
	TTL      uint8      `json:"ttl,omitempty"`
	TCPFlags string     `json:"tcpFlags,omitempty"`
	ICMPType uint8      `json:"icmpType,omitempty"`
	ICMPCode uint8      `json:"icmpCode,omitempty"`
	ICMPID   uint16     `json:"icmpId,omitempty"`
	ICMPSeq  uint16     `json:"icmpSeq,omitempty"`
	Mark     uint32     `json:"mark,omitempty"`
	// Outer is the encapsulating header when the packet was seen inside a tunnel.
	Outer *Tunnel `json:"outer,omitempty"`
}

// Flow returns the flow that p belongs to, in the direction it travels.
func (p *Packet) Flow() Flow {
	f := Flow{Proto: p.Proto, Src: p.Src, SrcPort: p.SrcPort, Dst: p.Dst, DstPort: p.DstPort}
	if p.Proto == ICMP {
		f.SrcPort, f.DstPort = p.ICMPID, 0
	}
	return f
}

// Rule is a netfilter rule hit, as the backend reports and prints it.
type Rule struct {
	// Backend is "legacy" (iptables-legacy, TRACE over nflog) or "nft" (nftables trace events).
	Backend string `json:"backend"`
	Family  string `json:"family"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	// Number is the 1-based position in the chain (legacy); Handle is the nft rule handle.
	Number int    `json:"number,omitempty"`
	Handle uint64 `json:"handle,omitempty"`
	// Type is "rule", "return" or "policy", as the kernel's trace says.
	Type string `json:"type"`
	// Text is the rule as iptables-save or nft list prints it.
	Text     string `json:"text,omitempty"`
	Verdict  string `json:"verdict,omitempty"`
	InIface  string `json:"inIface,omitempty"`
	OutIface string `json:"outIface,omitempty"`
	Mark     uint32 `json:"mark,omitempty"`
}

// Endpoint is an address and port of a NAT tuple.
type Endpoint = netip.AddrPort

// Tuple is one direction of a conntrack entry.
type Tuple struct {
	Proto Proto    `json:"proto"`
	Src   Endpoint `json:"src"`
	Dst   Endpoint `json:"dst"`
}

// NAT is an address rewrite, derived from conntrack's original and reply tuples.
type NAT struct {
	// Type is "DNAT" or "SNAT" (MASQUERADE is reported as SNAT with ByChain naming it).
	Type     string   `json:"type"`
	From     Endpoint `json:"from"`
	To       Endpoint `json:"to"`
	Original Tuple    `json:"original"`
	Reply    Tuple    `json:"reply"`
	// ByChain and ByRule name the rule that did the rewrite, when a trace event matched it.
	ByChain string `json:"byChain,omitempty"`
	ByRule  *Rule  `json:"byRule,omitempty"`
}

// Route is a FIB lookup result for the packet after NAT. It is a lookup
// made by the tracer, not an observation of the packet.
type Route struct {
	Dst     netip.Prefix `json:"dst"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	Dev     string       `json:"dev,omitempty"`
	PrefSrc netip.Addr   `json:"prefsrc,omitzero"`
	Type    string       `json:"type"`
	Onlink  bool         `json:"onlink,omitempty"`
	Table   int          `json:"table,omitempty"`
	// Text is the route as `ip route` prints it.
	Text string `json:"text"`
}

// ARP is an ARP request or reply.
type ARP struct {
	Op        string     `json:"op"`
	SenderIP  netip.Addr `json:"senderIp"`
	SenderMAC string     `json:"senderMac"`
	TargetIP  netip.Addr `json:"targetIp"`
	TargetMAC string     `json:"targetMac,omitempty"`
	// Proxy is true when the reply came from a host answering for an address it does not own.
	Proxy bool `json:"proxy,omitempty"`
}

// Tunnel is an outer header around the traced packet.
type Tunnel struct {
	// Type is "ipip" or "vxlan".
	Type string     `json:"type"`
	Src  netip.Addr `json:"src"`
	Dst  netip.Addr `json:"dst"`
	VNI  uint32     `json:"vni,omitempty"`
}

// DNS is a DNS message seen on the path.
type DNS struct {
	ID       uint16   `json:"id"`
	Response bool     `json:"response"`
	Question string   `json:"question"`
	Type     string   `json:"type"`
	Rcode    string   `json:"rcode,omitempty"`
	Answers  []string `json:"answers,omitempty"`
}

// Result is how a traced connection ended.
type Result string

// The results a path can end in.
const (
	Delivered Result = "delivered"
	Replied   Result = "replied"
	Dropped   Result = "dropped"
	NoAnswer  Result = "no-answer"
)

// Verdict says how the path ended and, for a drop, where and why.
type Verdict struct {
	Result Result `json:"result"`
	Node   string `json:"node,omitempty"`
	// Where names the rule or route that stopped the packet.
	Where  string `json:"where,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Loss reports events that a source could not deliver: the path may have a
// gap there.
type Loss struct {
	Node   string `json:"node"`
	Source string `json:"source"`
	Count  int    `json:"count"`
	Detail string `json:"detail"`
}

// Path is the result of a trace: the ordered hops of one flow and its reply.
type Path struct {
	SchemaVersion string    `json:"schemaVersion"`
	Flow          Flow      `json:"flow"`
	Started       time.Time `json:"started"`
	Finished      time.Time `json:"finished"`
	Nodes         []string  `json:"nodes"`
	Hops          []Hop     `json:"hops"`
	Verdict       Verdict   `json:"verdict"`
	Lost          []Loss    `json:"lost,omitempty"`
}
