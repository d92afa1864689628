package cluster

import (
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// The API of the NetTrace resource, served by deploy/crds/nettrace.yaml.
const (
	Group   = "nettrace.dev"
	Version = "v1alpha1"
	Kind    = "NetTrace"
)

// Resource names the NetTrace resource for the dynamic client.
var Resource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "nettraces"}

// NetTrace asks the agents of the nodes it names to follow one flow from a
// pod in its namespace, and holds what each of them saw.
type NetTrace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              Spec   `json:"spec"`
	Status            Status `json:"status,omitempty"`
}

// Spec is the trace that was asked for.
type Spec struct {
	// Source is the name of the pod the trace starts from, in the
	// NetTrace's namespace; empty when SourceIP is set.
	Source string `json:"source,omitempty"`
	// SourceIP is an address outside the cluster whose own traffic a
	// live trace follows, instead of a pod's.
	SourceIP string `json:"sourceIP,omitempty"`
	// SourceNode is the node whose agent leads the trace: the node the
	// source pod runs on, which plans and sends the probe; for SourceIP,
	// the node the traffic enters the cluster by, which waits for it.
	SourceNode string `json:"sourceNode"`
	// Target is the destination as the user gave it and as it was resolved.
	Target Target `json:"target"`
	// Flow is the flow to follow; the source agent chooses its source port.
	Flow FlowSpec `json:"flow"`
	// Mode is probe (send one packet) or live (wait for the pod's own).
	Mode Mode `json:"mode"`
	// Timeout bounds the wait for the probe's answer, or in live mode for
	// the first packet.
	Timeout metav1.Duration `json:"timeout"`
	// ArmTimeout bounds the source agent's wait for the other agents to
	// arm; DefaultArmTimeout when zero.
	ArmTimeout metav1.Duration `json:"armTimeout,omitzero"`
	// Nodes are the nodes involved: the source node first, then the nodes
	// the packet may reach.
	Nodes []string `json:"nodes"`
	// Pcap asks each agent for its packets, headers only, as pcapng.
	Pcap bool `json:"pcap,omitempty"`
}

// Mode is how the source agent gets the packet the trace follows.
type Mode string

// The modes of a trace.
const (
	// ModeProbe sends one probe from the source pod.
	ModeProbe Mode = "probe"
	// ModeLive waits for the source pod to send the flow's packet itself.
	ModeLive Mode = "live"
)

// DefaultArmTimeout is how long the source agent waits for the other
// agents to arm before it sends the probe without them.
const DefaultArmTimeout = 5 * time.Second

// TargetKind says what a target names.
type TargetKind string

// The kinds of target.
const (
	TargetService  TargetKind = "service"
	TargetPod      TargetKind = "pod"
	TargetIP       TargetKind = "ip"
	TargetNodePort TargetKind = "nodeport"
	TargetDNS      TargetKind = "dns"
	TargetExternal TargetKind = "external"
)

// Target is where the traced flow goes.
type Target struct {
	// Given is the target as the user typed it: "svc/nginx:80".
	Given string     `json:"given"`
	Kind  TargetKind `json:"kind"`
	// Namespace and Name name the service or pod, the node of a node
	// port, or the DNS name asked for.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Address and Port are where the flow is sent: a service's cluster
	// IP and port, a pod's IP, a node's address and node port.
	Address string `json:"address,omitempty"`
	Port    int32  `json:"port,omitempty"`
	// Endpoints are the pods the flow may be delivered to.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Endpoint is a pod that the flow may be delivered to.
type Endpoint struct {
	// Pod is "namespace/name".
	Pod     string `json:"pod"`
	Address string `json:"address"`
	// Port is the port the pod listens on, after the service's DNAT.
	Port int32  `json:"port,omitempty"`
	Node string `json:"node"`
}

// FlowSpec is the flow to follow, less the source, which is the pod's.
type FlowSpec struct {
	Proto   trace.Proto `json:"proto"`
	Dst     string      `json:"dst"`
	DstPort int32       `json:"dstPort,omitempty"`
}

// Phase is where a trace is in its life.
type Phase string

// The phases of a trace, in order; Failed may follow any other.
const (
	// PhasePending: created, no agent has acted on it yet.
	PhasePending Phase = "Pending"
	// PhaseArming: the source agent planned the flow; agents arm for it.
	PhaseArming Phase = "Arming"
	// PhaseRunning: the probe is on its way, or live traffic awaited.
	PhaseRunning Phase = "Running"
	// PhaseCollecting: the probe is done; agents stop and report hops.
	PhaseCollecting Phase = "Collecting"
	// PhaseDone: every armed agent reported.
	PhaseDone Phase = "Done"
	// PhaseFailed: the trace could not run; Reason and Message say why.
	PhaseFailed Phase = "Failed"
)

// Reasons of a failed trace.
const (
	// ReasonInvalid: the request is wrong (the source pod is not on the
	// node, uses the host's network, …).
	ReasonInvalid = "Invalid"
	// ReasonError: the trace could not run on the node.
	ReasonError = "Error"
)

// Status is what the agents did and saw.
type Status struct {
	Phase   Phase  `json:"phase,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Flow is the planned flow, with the probe's source port (live: the
	// source port of the first packet seen, zero until then).
	Flow *trace.Flow `json:"flow,omitempty"`
	// Nodes holds one entry per node, written by that node's agent.
	Nodes []NodeStatus `json:"nodes,omitempty"`
	// Probe is what the source agent sent and got back.
	Probe *ProbeStatus `json:"probe,omitempty"`
}

// NodeStatus is what one node's agent reports.
type NodeStatus struct {
	Node string `json:"node"`
	// Armed: the node's event sources are watching the flow.
	Armed bool `json:"armed,omitempty"`
	// Done: the agent stopped, restored the node and reported its hops.
	Done bool `json:"done,omitempty"`
	// Error says why the node could not take part, or what went wrong.
	Error string `json:"error,omitempty"`
	// Losses are the events the node's sources could not deliver.
	Losses []trace.Loss `json:"losses,omitempty"`
	// Hops are the node's hops, as the event sources reported them.
	Hops []trace.Hop `json:"hops,omitempty"`
	// Pcap holds the node's captured packets, headers only, as pcapng.
	Pcap []byte `json:"pcap,omitempty"`
}

// ProbeStatus is the source agent's account of the packet it followed.
type ProbeStatus struct {
	// Started is when the probe was sent, or live, the wait began.
	Started time.Time `json:"started,omitzero"`
	// Finished is when the answer came (or the wait ended): the other
	// agents then stop.
	Finished time.Time `json:"finished,omitzero"`
	// Result is how the connection ended for the probe: replied, dropped
	// or no-answer. Empty in live mode.
	Result trace.Result `json:"result,omitempty"`
	// Reply says what came back: "SYN-ACK", "RST", "DNS NOERROR, 1 answer".
	Reply string `json:"reply,omitempty"`
	// DNS is the answer to a DNS probe.
	DNS *trace.DNS `json:"dns,omitempty"`
	// Unarmed are the nodes that had not armed when the probe was sent.
	Unarmed []string `json:"unarmed,omitempty"`
}

// Node returns the entry of node, or nil.
func (s *Status) Node(node string) *NodeStatus {
	for i := range s.Nodes {
		if s.Nodes[i].Node == node {
			return &s.Nodes[i]
		}
	}
	return nil
}

// SetNode returns the entry of node, adding it when missing.
func (s *Status) SetNode(node string) *NodeStatus {
	if n := s.Node(node); n != nil {
		return n
	}
	s.Nodes = append(s.Nodes, NodeStatus{Node: node})
	return &s.Nodes[len(s.Nodes)-1]
}

// Final reports whether the trace has ended, done or failed.
func (s *Status) Final() bool { return s.Phase == PhaseDone || s.Phase == PhaseFailed }

// Complete reports whether every node that armed has reported, after the
// probe finished: the trace is then done.
func (t *NetTrace) Complete() bool {
	if t.Status.Probe == nil || t.Status.Probe.Finished.IsZero() {
		return false
	}
	for _, n := range t.Spec.Nodes {
		e := t.Status.Node(n)
		switch {
		case e == nil && slices.Contains(t.Status.Probe.Unarmed, n):
			// No agent answered for it: it is reported missing.
		case e == nil || !(e.Done || e.Error != "" && !e.Armed):
			return false
		}
	}
	return true
}

// ArmTimeout returns the spec's arm timeout, or the default.
func (t *NetTrace) ArmTimeout() time.Duration {
	if t.Spec.ArmTimeout.Duration > 0 {
		return t.Spec.ArmTimeout.Duration
	}
	return DefaultArmTimeout
}

// CollectGrace is how long, after the probe's timeout, the agents have to
// stop and report; past it, an agent that has not reported is missing.
const CollectGrace = 3 * time.Second

// Deadline is the latest a trace created at created may end: its arm
// timeout, its probe timeout and the collect grace. Agents stop by then.
func (t *NetTrace) Deadline(created time.Time) time.Time {
	return created.Add(t.ArmTimeout() + t.Spec.Timeout.Duration + CollectGrace)
}
