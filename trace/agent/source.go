package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
	"github.com/kubectl-nettrace/nettrace/trace/engine"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// liveReplyWait bounds the wait for the reply once a live packet was seen.
const liveReplyWait = 3 * time.Second

// watchedPod is a pod on the node whose namespace a session watches.
type watchedPod struct {
	route.Pod
	// label labels its hops: "namespace/name".
	label string
	// port is the port it listens on for the flow; zero when unknown.
	port uint16
}

// runSource runs the part of the node that leads the trace: it checks
// the request, finds the source pod, plans the probe and publishes the
// flow, arms, waits for the other nodes to arm, sends the probe (or awaits
// the live packet), publishes the answer, then stops and reports. For a
// source outside the cluster, this is the node its traffic enters by:
// there is no pod to find and no probe, the trace awaits the source's own
// packet as it arrives.
func (r *runner) runSource(ctx context.Context) error {
	nt := r.latest
	src, err := r.a.validate(ctx, nt)
	if err != nil {
		return r.abandon(nil, err)
	}
	pods := r.localEndpoints(src.ip)
	flow := trace.Flow{Proto: nt.Spec.Flow.Proto, Src: src.ip, Dst: src.dst, DstPort: uint16(nt.Spec.Flow.DstPort)}
	var prober Prober
	if !src.outside() {
		pod, err := r.a.cfg.Dataplane.FindPod(src.ip)
		if err != nil {
			return r.abandon(nil, fmt.Errorf("finding the network namespace of pod %s (%s) on %s: %w",
				src.label, src.ip, r.a.cfg.Node, err))
		}
		pods = append([]watchedPod{{Pod: pod, label: src.label}}, pods...)
		if nt.Spec.Mode != cluster.ModeLive {
			if prober, err = r.a.cfg.Dataplane.Plan(pod, probeSpec(nt, flow)); err != nil {
				return r.abandon(nil, err)
			}
			defer prober.Close()
			flow = prober.Flow()
		}
	}

	armCtx, cancel := context.WithTimeout(ctx, nt.ArmTimeout())
	defer cancel()
	unlock, err := r.lock(armCtx)
	if err != nil {
		return r.abandon(nil, err)
	}
	defer unlock()
	// The flow goes out first, so that the other agents arm meanwhile.
	err = r.writeStatus(func(nt *cluster.NetTrace) bool {
		nt.Status.Phase, nt.Status.Flow = cluster.PhaseArming, &flow
		return true
	})
	if err != nil {
		return r.abandon(nil, err)
	}
	sess, err := r.arm(ctx, flow, pods)
	if err != nil {
		return r.abandon(nil, err)
	}
	if err := r.writeStatus(r.setArmed); err != nil {
		return r.abandon(sess, err)
	}

	nt, _ = r.waitFor(armCtx, allArmed)
	if ctx.Err() != nil {
		return r.abandon(sess, ctx.Err())
	}
	started := cluster.ProbeStatus{Started: time.Now(), Unarmed: unarmed(nt)}
	if len(started.Unarmed) > 0 {
		r.log.Info("probing without the nodes that did not arm", "unarmed", started.Unarmed)
	}
	err = r.writeStatus(func(nt *cluster.NetTrace) bool {
		p := started
		nt.Status.Phase, nt.Status.Probe = cluster.PhaseRunning, &p
		return true
	})
	if err != nil {
		return r.abandon(sess, err)
	}

	answer, flow, err := r.exchange(ctx, sess, prober, flow, started.Started)
	if err != nil {
		return r.abandon(sess, err)
	}
	sess.Settle(settleQuiet, settleLimit)
	err = r.writeStatus(func(nt *cluster.NetTrace) bool {
		answer.Started = cmp.Or(answer.Started, started.Started)
		answer.Unarmed = started.Unarmed
		nt.Status.Phase, nt.Status.Probe, nt.Status.Flow = cluster.PhaseCollecting, &answer, &flow
		return true
	})
	if err != nil {
		return r.abandon(sess, err)
	}
	return r.stopAndReport(sess, flow)
}

// setArmed marks this node armed.
func (r *runner) setArmed(nt *cluster.NetTrace) bool {
	nt.Status.SetNode(r.a.cfg.Node).Armed = true
	return true
}

// allArmed reports whether every node armed, or could not.
func allArmed(nt *cluster.NetTrace) bool { return len(unarmed(nt)) == 0 || nt.Status.Final() }

// unarmed lists the nodes that have neither armed nor failed to.
func unarmed(nt *cluster.NetTrace) []string {
	var out []string
	for _, n := range nt.Spec.Nodes {
		if e := nt.Status.Node(n); e == nil || !e.Armed && e.Error == "" {
			out = append(out, n)
		}
	}
	return out
}

// probeSpec is the probe of the trace's flow: a DNS query for a DNS target.
func probeSpec(nt *cluster.NetTrace, flow trace.Flow) probe.Spec {
	spec := probe.Spec{
		Kind:    probe.Kind(flow.Proto),
		Src:     flow.Src,
		Dst:     flow.Dst,
		DstPort: flow.DstPort,
		Timeout: nt.Spec.Timeout.Duration,
	}
	if nt.Spec.Target.Kind == cluster.TargetDNS {
		spec.Kind = probe.DNS
		spec.Question = strings.TrimSuffix(nt.Spec.Target.Name, ".") + "."
	}
	return spec
}

// exchange sends the probe and returns what came back; live, it waits up
// to the timeout for the source's first packet of the flow since started,
// when every node had armed, completes the flow with its source port, and
// waits a moment for its reply.
func (r *runner) exchange(ctx context.Context, sess Session, prober Prober, flow trace.Flow, started time.Time) (cluster.ProbeStatus, trace.Flow, error) {
	if prober != nil {
		res, err := prober.Send(ctx)
		if err != nil {
			return cluster.ProbeStatus{}, flow, fmt.Errorf("sending the probe from %s: %w", r.a.cfg.Node, err)
		}
		r.log.Info("probe answered", "flow", flow.String(), "answer", res.Answer, "reply", res.Reply)
		return cluster.ProbeStatus{Started: res.Sent, Finished: time.Now(), Result: res.Answer.Result(),
			Reply: res.Reply, DNS: res.DNS}, flow, nil
	}

	timeout := r.latest.Spec.Timeout.Duration
	waitFirst, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	first, err := sess.Await(waitFirst, engine.StartsFlow(flow, started))
	if err != nil {
		if ctx.Err() != nil {
			return cluster.ProbeStatus{}, flow, ctx.Err()
		}
		return cluster.ProbeStatus{Finished: time.Now(), Result: trace.NoAnswer,
			Reply: fmt.Sprintf("no packet of %s within %s", engine.DescribeLive(flow), timeout)}, flow, nil
	}
	flow = engine.FlowOf(flow, first)
	r.log.Info("following a live flow", "flow", flow.String())
	waitReply, cancel := context.WithTimeout(ctx, liveReplyWait)
	defer cancel()
	if _, err := sess.Await(waitReply, repliesTo(flow)); err != nil && ctx.Err() != nil {
		return cluster.ProbeStatus{}, flow, ctx.Err()
	}
	return cluster.ProbeStatus{Finished: time.Now()}, flow, nil
}

// localEndpoints finds the target's endpoints that run on this node,
// other than the source pod: their namespaces are watched too.
func (r *runner) localEndpoints(source netip.Addr) []watchedPod {
	var pods []watchedPod
	for _, ep := range r.latest.Spec.Target.Endpoints {
		ip, err := netip.ParseAddr(ep.Address)
		if ep.Node != r.a.cfg.Node || ep.Pod == "" || err != nil || ip == source ||
			slices.ContainsFunc(pods, func(p watchedPod) bool { return p.IP == ip }) {
			continue
		}
		pod, err := r.a.cfg.Dataplane.FindPod(ip)
		if err != nil {
			r.log.Info("not watching an endpoint that is not a pod here", "pod", ep.Pod, "ip", ip, "err", err)
			continue
		}
		pods = append(pods, watchedPod{Pod: pod, label: ep.Pod, port: uint16(ep.Port)})
	}
	return pods
}

// abandon stops the session (if any) of a trace that cannot go on, and
// says why: a deleted trace is left alone, a stopping agent tells the
// trace it stopped, any other error fails the trace (on the source node)
// or this node's part (on another).
func (r *runner) abandon(sess Session, err error) error {
	if sess != nil {
		r.stopQuietly(sess)
	}
	switch cause := context.Cause(r.ctx); {
	case errors.Is(cause, errDeleted):
		return err
	case errors.Is(cause, errAgentStopped):
		r.reportStopped()
		return err
	}
	werr := r.writeStatus(func(nt *cluster.NetTrace) bool {
		e := nt.Status.SetNode(r.a.cfg.Node)
		e.Error, e.Done = err.Error(), true
		if r.source() && !nt.Status.Final() {
			nt.Status.Phase, nt.Status.Reason, nt.Status.Message = cluster.PhaseFailed, cluster.ReasonError, err.Error()
			if errors.Is(err, errInvalid) {
				nt.Status.Reason = cluster.ReasonInvalid
			}
		}
		completePhase(nt)
		return true
	})
	return errors.Join(err, werr)
}
