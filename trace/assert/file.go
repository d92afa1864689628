package assert

import (
	"net/netip"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// File is a parsed expectation file.
type File struct {
	// Name is the file's name, as errors and reports give it.
	Name  string
	Cases []Case
}

// Case is one flow to trace and what its path must show.
type Case struct {
	// Name names the case in reports: the file's, or "SOURCE → TARGET".
	Name string
	// Line is where the case starts in the file; Field is its place,
	// "cases[0]".
	Line  int
	Field string
	// Source and Target are as `kubectl nettrace SOURCE TARGET` takes them.
	Source, Target string
	// Namespace is the source pod's; empty for the kubeconfig's.
	Namespace string
	// Proto is tcp, udp or icmp; empty for the target's own.
	Proto string
	// Port is the destination port when Target names none.
	Port uint16
	// Live follows the source's own traffic instead of a probe.
	Live bool
	// Timeout bounds the wait for the answer, or live for the traffic;
	// zero for the default.
	Timeout time.Duration
	// Send, for a live case, is a command run once the agents have armed,
	// to make the traffic that the trace follows.
	Send []string
	// Expect is what the path must show.
	Expect Expect
}

// Expect is what a path must show. Each part is checked when the file
// gives it.
type Expect struct {
	// Verdict is how the path must end; nil when not checked.
	Verdict *Verdict
	// NAT lists the rewrites the path must show; nil when not checked. An
	// empty list that is not nil asserts that the path has no NAT at all;
	// NATLine is then where the file says so.
	NAT     []NAT
	NATLine int
	// Tunnel is the encapsulation between nodes: "ipip", "vxlan", or
	// "none" for no tunnel at all; empty when not checked.
	Tunnel     string
	TunnelLine int
	// Hits are rules that the path must hit; Misses, rules it must not.
	Hits, Misses []RuleMatch
}

// Verdict is how a path must end.
type Verdict struct {
	Line   int
	Result trace.Result
	// DroppedBy, for a drop, is a glob that the chain of the rule that
	// dropped the packet, or the whole place ("filter KUBE-SERVICES #3
	// REJECT"), must match.
	DroppedBy string
}

// NAT is a rewrite the path must show.
type NAT struct {
	Line int
	// Field is its place in the file: "cases[0].expect.nat[1]".
	Field string
	// Type is "DNAT" or "SNAT".
	Type string
	To   Address
}

// Address is where a NAT must rewrite the packet to: exactly one of a pod
// that Selector selects, the pod Pod, the address IP, or one of the
// addresses of the node Node, and the port Port when it is not zero.
type Address struct {
	// Selector is a label selector of pods in the case's namespace.
	Selector string
	// Pod is NAME in the case's namespace, or NAMESPACE/NAME.
	Pod  string
	IP   netip.Addr
	Node string
	Port uint16
}

// RuleMatch selects rule hops: those that every field given matches.
type RuleMatch struct {
	Line  int
	Field string
	// Table, Chain and Node are globs, as path.Match takes them.
	Table, Chain, Node string
	// Rule is a substring of the rule's text, as iptables-save or nft
	// prints it.
	Rule string
}
