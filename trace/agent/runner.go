package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
	"github.com/kubectl-nettrace/nettrace/trace/engine"
)

// How long a session goes on after the probe's answer: the sources hand
// over their last events a little after the packets went by.
const (
	settleQuiet = 100 * time.Millisecond
	settleLimit = time.Second
)

// The causes that end a runner before its trace ends.
var (
	errDeleted      = errors.New("the NetTrace was deleted")
	errAgentStopped = errors.New("the agent is stopping")
)

// runner runs this node's part of one NetTrace.
type runner struct {
	a   *Agent
	log *slog.Logger
	// namespace and name identify the NetTrace.
	namespace, name string
	// latest is the NetTrace as last seen; updates brings newer ones.
	latest  *cluster.NetTrace
	updates chan *cluster.NetTrace
	// deadline is when the node stops, whatever the others do.
	deadline time.Time
	ctx      context.Context
	cancel   context.CancelCauseFunc
}

func newRunner(a *Agent, nt *cluster.NetTrace) *runner {
	r := &runner{
		a:         a,
		log:       a.log.With("trace", nt.Namespace+"/"+nt.Name),
		namespace: nt.Namespace,
		name:      nt.Name,
		latest:    nt,
		updates:   make(chan *cluster.NetTrace, 1),
		// Stop early enough that the report reaches the plugin before its
		// own deadline.
		deadline: nt.Deadline(time.Now()).Add(-cluster.CollectGrace / 2),
	}
	r.ctx, r.cancel = context.WithCancelCause(context.Background())
	return r
}

// update hands the runner a newer NetTrace; only the latest is kept. The
// informer calls it from one goroutine.
func (r *runner) update(nt *cluster.NetTrace) {
	select {
	case <-r.updates:
	default:
	}
	r.updates <- nt
}

// run runs the node's part until it is done, the trace is deleted, its
// deadline passes or the agent stops (agentCtx).
func (r *runner) run(agentCtx context.Context) {
	defer r.cancel(nil)
	stop := context.AfterFunc(agentCtx, func() { r.cancel(errAgentStopped) })
	defer stop()
	ctx, cancel := context.WithDeadline(r.ctx, r.deadline)
	defer cancel()

	var err error
	if r.source() {
		err = r.runSource(ctx)
	} else {
		err = r.runPeer(ctx)
	}
	if err != nil && !errors.Is(err, errDeleted) && !errors.Is(context.Cause(r.ctx), errDeleted) {
		r.log.Error("trace ended with an error", "err", err)
	}
}

// source reports whether this node is the trace's source node.
func (r *runner) source() bool { return r.latest.Spec.SourceNode == r.a.cfg.Node }

// waitFor waits until the NetTrace satisfies cond, and returns it. It
// returns ctx's error when ctx ends first.
func (r *runner) waitFor(ctx context.Context, cond func(*cluster.NetTrace) bool) (*cluster.NetTrace, error) {
	for !cond(r.latest) {
		select {
		case nt := <-r.updates:
			r.latest = nt
		case <-ctx.Done():
			return r.latest, ctx.Err()
		}
	}
	return r.latest, nil
}

// writeStatus changes the NetTrace's status through change, from a fresh
// read, and keeps what it wrote as the latest. It writes even after the
// trace's context ended, unless the NetTrace was deleted.
func (r *runner) writeStatus(change func(*cluster.NetTrace) bool) error {
	if errors.Is(context.Cause(r.ctx), errDeleted) {
		return errDeleted
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 10*time.Second)
	defer cancel()
	nt, err := r.a.client.UpdateStatus(ctx, r.namespace, r.name, change)
	if apierrors.IsNotFound(err) {
		r.cancel(errDeleted) // before the informer tells
		return errDeleted
	}
	if err != nil {
		return err
	}
	r.latest = nt
	return nil
}

// lock takes the node for one session, waiting for the one armed before
// it, at most until ctx ends. The returned function gives it back.
func (r *runner) lock(ctx context.Context) (func(), error) {
	select {
	case r.a.busy <- struct{}{}:
		return func() { <-r.a.busy }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s was busy with another trace: %w", r.a.cfg.Node, ctx.Err())
	}
}

// arm starts a session for flow, watching the given pods.
func (r *runner) arm(ctx context.Context, flow trace.Flow, pods []watchedPod) (Session, error) {
	cfg := engine.Config{
		Node:  r.a.cfg.Node,
		Match: matchOf(flow, pods, r.latest.Spec.Target.Endpoints, r.source()),
		Flow:  flow,
	}
	for _, p := range pods {
		cfg.Watch = append(cfg.Watch, engine.Watch{Path: p.Netns, Label: p.label, HostVeth: p.HostVeth, Iface: p.PeerName})
		cfg.PathInterfaces = append(cfg.PathInterfaces, p.HostVeth)
	}
	sess, err := r.a.cfg.Dataplane.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("arming on %s: %w", r.a.cfg.Node, err)
	}
	r.log.Info("armed", "flow", flow.String(), "pods", len(pods))
	return sess, nil
}

// maxEnds bounds the ends a match names; a target with more endpoints is
// selected by their ports.
const maxEnds = 32

// matchOf selects the flow in the node's sources: by the probe's unique
// source port (for ICMP its echo identifier) or, live, by the port the
// packets carry here, and for ICMP by the addresses the flow may have. TCP
// and UDP are selected by the destination and the target's endpoints too,
// so that a MASQUERADE that gives the flow another source port, on this
// node or before, does not hide it: the captures see the rewritten packets
// from the first on. The engine widens the match across what these miss,
// and the correlator leaves out the other flows the ends select.
func matchOf(flow trace.Flow, pods []watchedPod, endpoints []cluster.Endpoint, onSource bool) trace.Match {
	m := trace.Match{Proto: flow.Proto, Addrs: []netip.Addr{flow.Src, flow.Dst}}
	for _, p := range pods {
		if p.IP != flow.Src && p.IP != flow.Dst {
			m.Addrs = append(m.Addrs, p.IP)
		}
	}
	switch {
	case flow.SrcPort != 0:
		m.Ports = []uint16{flow.SrcPort}
	case flow.Proto != trace.ICMP && onSource:
		m.Ports = []uint16{flow.DstPort}
	case flow.Proto != trace.ICMP:
		m.Ports = []uint16{livePort(flow, pods)}
	}
	if flow.Proto != trace.ICMP {
		m.Ends = endsOf(flow, endpoints)
	}
	if len(m.Ends) > maxEnds {
		for _, e := range m.Ends {
			if !slices.Contains(m.Ports, e.Port()) {
				m.Ports = append(m.Ports, e.Port())
			}
		}
		m.Ends = nil
	}
	return m
}

// endsOf lists the destination of a TCP or UDP flow and the endpoints of
// its target, each once.
func endsOf(flow trace.Flow, endpoints []cluster.Endpoint) []netip.AddrPort {
	ends := []netip.AddrPort{netip.AddrPortFrom(flow.Dst, flow.DstPort)}
	for _, ep := range endpoints {
		addr, err := netip.ParseAddr(ep.Address)
		if end := netip.AddrPortFrom(addr, uint16(ep.Port)); err == nil && ep.Port != 0 && !slices.Contains(ends, end) {
			ends = append(ends, end)
		}
	}
	return ends
}

// livePort is the port a live flow's packets carry on a node other than
// the source's: the port of the endpoints there, after the service's
// DNAT, when they all listen on the same one; else the destination port.
func livePort(flow trace.Flow, pods []watchedPod) uint16 {
	port := uint16(0)
	for _, p := range pods {
		if p.port == 0 || port != 0 && p.port != port {
			return flow.DstPort
		}
		port = p.port
	}
	if port == 0 {
		return flow.DstPort
	}
	return port
}

// stopAndReport stops the session, restoring the node, and writes the
// node's hops, losses and, when asked, packets into the status.
func (r *runner) stopAndReport(sess Session, flow trace.Flow) error {
	collected, stopErr := sess.Stop(flow)
	entry := cluster.NodeStatus{Node: r.a.cfg.Node, Armed: true, Done: true}
	if stopErr != nil {
		entry.Error = stopErr.Error()
	}
	if collected != nil {
		entry.Hops = ofFlow(flow, collected.Hops)
		entry.Losses = collected.Lost
		if r.latest.Spec.Pcap {
			var buf bytes.Buffer
			if err := collected.WritePcap(&buf, nil); err != nil {
				entry.Losses = append(entry.Losses, trace.Loss{Node: r.a.cfg.Node, Source: "capture", Count: 1,
					Detail: fmt.Sprintf("writing the pcapng: %v", err)})
			} else {
				entry.Pcap = buf.Bytes()
			}
		}
	}
	r.log.Info("stopped", "hops", len(entry.Hops), "losses", len(entry.Losses), "err", stopErr)
	return r.writeStatus(func(nt *cluster.NetTrace) bool {
		entry.Fit(cluster.NodeBudget(len(nt.Spec.Nodes)))
		*nt.Status.SetNode(r.a.cfg.Node) = entry
		completePhase(nt)
		return true
	})
}

// stopQuietly stops a session whose trace failed or was deleted.
func (r *runner) stopQuietly(sess Session) {
	_, err := sess.Stop(trace.Flow{})
	r.log.Info("stopped without reporting", "cause", context.Cause(r.ctx), "err", err)
}

// reportStopped tells the trace that the agent stopped before the trace
// ended; the node was restored.
func (r *runner) reportStopped() {
	if !errors.Is(context.Cause(r.ctx), errAgentStopped) {
		return
	}
	_ = r.writeStatus(func(nt *cluster.NetTrace) bool {
		e := nt.Status.SetNode(r.a.cfg.Node)
		if e.Done {
			return false
		}
		e.Done = true
		e.Error = "the agent on " + r.a.cfg.Node + " stopped during the trace; it restored the node"
		completePhase(nt)
		return true
	})
}

// completePhase marks the trace done when every armed node reported.
func completePhase(nt *cluster.NetTrace) {
	if !nt.Status.Final() && nt.Complete() {
		nt.Status.Phase = cluster.PhaseDone
	}
}

// ofFlow leaves out the NAT hops of other flows, which a live trace's
// conntrack match on the destination port also reports.
func ofFlow(flow trace.Flow, hops []trace.Hop) []trace.Hop {
	out := make([]trace.Hop, 0, len(hops))
	for _, h := range hops {
		if h.NAT != nil && flow.SrcPort != 0 &&
			(h.NAT.Original.Proto != flow.Proto || h.NAT.Original.Src.Port() != flow.SrcPort) {
			continue
		}
		out = append(out, h)
	}
	return out
}
