package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// Dataplane is what the agent does on its node's network: the trace
// engine in the node's network namespace (NodeDataplane), or a fake in
// tests.
type Dataplane interface {
	// Cleanup removes what dead tracers left on the node.
	Cleanup() ([]netfilter.Session, error)
	// FindPod finds the network namespace and host veth of a pod on the node.
	FindPod(ip netip.Addr) (route.Pod, error)
	// Plan plans a probe inside the pod's network namespace.
	Plan(pod route.Pod, spec probe.Spec) (Prober, error)
	// Start arms a session on the node.
	Start(ctx context.Context, cfg engine.Config) (Session, error)
}

// Prober is a planned probe (*probe.Probe).
type Prober interface {
	Flow() trace.Flow
	Send(ctx context.Context) (probe.Result, error)
	Close() error
}

// Session is an armed trace session (*engine.Session).
type Session interface {
	Await(ctx context.Context, match func(trace.Hop) bool) (trace.Hop, error)
	Settle(quiet, limit time.Duration)
	Stop(flow trace.Flow) (*engine.Collected, error)
}

// nodeDataplane is the trace engine in the network namespace that the
// agent runs in, the node's.
type nodeDataplane struct {
	// node is held open, so that probes can make their port unique in it
	// from a thread inside a pod's namespace.
	node ns.NetNS
}

// NodeDataplane returns the dataplane of the calling thread's network
// namespace, which must be the node's. Call it before any goroutine
// enters another namespace.
func NodeDataplane() (Dataplane, error) {
	node, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("opening the node's network namespace: %w", err)
	}
	return &nodeDataplane{node: node}, nil
}

func (d *nodeDataplane) Cleanup() ([]netfilter.Session, error) {
	var stale []netfilter.Session
	err := d.node.Do(func(ns.NetNS) error {
		var err error
		stale, err = netfilter.CleanupStale(0)
		return err
	})
	return stale, err
}

func (d *nodeDataplane) FindPod(ip netip.Addr) (route.Pod, error) {
	var pod route.Pod
	err := d.node.Do(func(ns.NetNS) error {
		var err error
		pod, err = route.FindPod(ip)
		return err
	})
	return pod, err
}

func (d *nodeDataplane) Plan(pod route.Pod, spec probe.Spec) (Prober, error) {
	spec.UniqueIn = append(spec.UniqueIn, d.path())
	var p *probe.Probe
	err := route.InNetns(pod.Netns, func() error {
		var err error
		p, err = probe.Plan(spec)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("planning the probe in the network namespace of %s: %w", pod.IP, err)
	}
	return p, nil
}

func (d *nodeDataplane) Start(ctx context.Context, cfg engine.Config) (Session, error) {
	cfg.Netns = d.path()
	s, err := engine.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// path names the node's namespace through the handle held open: the path
// of the thread that opened it may be gone.
func (d *nodeDataplane) path() string { return fmt.Sprintf("/proc/self/fd/%d", d.node.Fd()) }
