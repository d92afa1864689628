// Package correlate turns the hops that the event sources of every traced
// node reported into one trace.Path: it tells the request from the reply
// across NAT, orders the hops along the packet's way (correcting for node
// clocks that disagree), merges the same observation reported twice, folds
// retransmissions, attributes each conntrack rewrite to the rule that did it,
// derives the tunnel and delivery hops, and says how the path ended. It is
// pure: it reads its Input and touches nothing on any node.
package correlate

import (
	"net/netip"
	"slices"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// SourceName is the Source of the hops that the correlator derives (encap,
// decap and deliver) rather than observes.
const SourceName = "correlate"

// Input is everything a trace collected.
type Input struct {
	// Flow is the traced flow as the client addressed it.
	Flow trace.Flow
	// Translated are the forms of the request after NAT that conntrack
	// reported (conntrack.Flows' request), in any order. The rewrites of
	// the NAT hops in Hops are added to them.
	Translated []trace.Flow
	// Hops are the hops of every node, in any order.
	Hops []trace.Hop
	// Lost are the events the sources could not deliver.
	Lost []trace.Loss
	// Nodes are the traced nodes; those without hops still appear in the
	// path's node list.
	Nodes []string
	// Destinations are the ends the request may be delivered to: the
	// destination pod, or every endpoint of the destination service. When
	// empty, a request seen last inside a netns other than the client's,
	// or on a host veth (cali…) other than the client's, is delivered.
	Destinations []Endpoint
	// Answer is what the probe got back; nil when no probe was sent.
	Answer *Answer
	// Started and Finished bound the trace; when zero, they are taken
	// from the hops.
	Started, Finished time.Time
}

// Endpoint is a pod, or another end of the flow, that the request may be
// delivered to.
type Endpoint struct {
	// Name labels it in the deliver hop's note: "default/nginx-test-6d4cf56db6-2x8kq".
	Name string
	Addr netip.Addr
	// Node is the node it runs on.
	Node string
	// Netns is the label of the hops seen inside its network namespace,
	// and HostVeth the node's end of its veth (cali7715d358f22). When both
	// are empty, the request seen anywhere on Node addressed to Addr is
	// delivered.
	Netns    string
	HostVeth string
}

// Answer is what the probe that sent the traced packet got back, as
// probe.Result reports it.
type Answer struct {
	// Result is how the probe saw the connection end (probe.Answer.Result):
	// replied, dropped for a refusal or an ICMP error, or no-answer.
	Result trace.Result
	// Reply says what came back: "SYN-ACK", "RST",
	// "ICMP port unreachable from 10.2.0.2", or how long it waited.
	Reply string
}

// Correlate orders the hops of in into the path of one flow and its reply
// and gives the path its verdict. The steps run in the order a reader would
// check them by hand: which direction each hop belongs to, where it falls
// on the way, which reports are the same event, which rule did each NAT,
// where the packet was tunnelled and delivered, and how it ended.
func Correlate(in Input) trace.Path {
	id := newIdentity(in.Flow, in.Translated, in.Hops)
	hops := assignDirections(id, in.Hops)
	hops = order(id, hops)
	hops = mergeDuplicates(id, hops)
	hops = attributeNAT(hops)
	hops = deriveTunnels(hops)
	hops = deriveDelivery(hops, in.Destinations)
	verdict := judge(in.Flow, hops, in.Answer, in.Lost)

	started, finished := in.Started, in.Finished
	for _, h := range hops {
		if h.Kind == trace.HopRoute {
			continue // the time of a lookup is not the packet's
		}
		if in.Started.IsZero() && (started.IsZero() || h.Time.Before(started)) {
			started = h.Time
		}
		if in.Finished.IsZero() && (finished.IsZero() || h.Time.After(finished)) {
			finished = h.Time
		}
	}
	if hops == nil {
		hops = []trace.Hop{}
	}
	return trace.Path{
		SchemaVersion: trace.SchemaVersion,
		Flow:          in.Flow,
		Started:       started,
		Finished:      finished,
		Nodes:         nodesOf(hops, in.Nodes),
		Hops:          hops,
		Verdict:       verdict,
		Lost:          slices.Clone(in.Lost),
	}
}

// nodesOf lists the nodes in the order the path meets them, then the traced
// nodes where nothing was seen.
func nodesOf(hops []trace.Hop, traced []string) []string {
	nodes := []string{}
	for _, h := range hops {
		if h.Node != "" && !slices.Contains(nodes, h.Node) {
			nodes = append(nodes, h.Node)
		}
	}
	for _, n := range traced {
		if !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	return nodes
}
