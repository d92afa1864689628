package agent

import (
	"context"
	"errors"

	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// runPeer runs the part of a node other than the source's: once the
// source agent published the flow, it arms for it, watching the target's
// pods on the node; once the probe is done (or the deadline passed), it
// lets the sources settle, stops and reports.
func (r *runner) runPeer(ctx context.Context) error {
	nt, err := r.waitFor(ctx, func(nt *cluster.NetTrace) bool { return nt.Status.Flow != nil || nt.Status.Final() })
	if err != nil {
		return r.abandon(nil, err)
	}
	if nt.Status.Final() {
		return nil
	}
	if probeFinished(nt) {
		return r.abandon(nil, errors.New("the agent saw the trace only after the probe was sent"))
	}
	armCtx, cancel := context.WithTimeout(ctx, nt.ArmTimeout())
	defer cancel()
	unlock, err := r.lock(armCtx)
	if err != nil {
		return r.abandon(nil, err)
	}
	defer unlock()
	sess, err := r.arm(ctx, *nt.Status.Flow, r.localEndpoints(nt.Status.Flow.Src))
	if err != nil {
		return r.abandon(nil, err)
	}
	if err := r.writeStatus(r.setArmed); err != nil {
		return r.abandon(sess, err)
	}

	nt, err = r.waitFor(ctx, func(nt *cluster.NetTrace) bool { return probeFinished(nt) || nt.Status.Final() })
	switch {
	case nt.Status.Phase == cluster.PhaseFailed:
		r.stopQuietly(sess)
		return nil
	case err != nil && !errors.Is(err, context.DeadlineExceeded):
		return r.abandon(sess, err)
	}
	// At the deadline, what was seen is reported all the same.
	sess.Settle(settleQuiet, settleLimit)
	return r.stopAndReport(sess, *nt.Status.Flow)
}

// probeFinished reports whether the source agent published the probe's answer.
func probeFinished(nt *cluster.NetTrace) bool {
	return nt.Status.Probe != nil && !nt.Status.Probe.Finished.IsZero()
}
