package cluster

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/capture/pcapng"
	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/correlate"
)

// DefaultTimeout is how long a probe waits for its answer, or a live trace
// for its first packet, when Options.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// AgentSource is the Source of the losses that say a node's agent did not
// take part, or did not report: the path misses that node's hops.
const AgentSource = "agent"

// Options is one `kubectl nettrace SOURCE TARGET`.
type Options struct {
	// Kube reads the pods, services, endpoint slices and nodes; Dynamic
	// creates, watches and deletes the NetTrace. Both act as the user.
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Namespace is the source pod's, and the NetTrace's.
	Namespace string
	// Source and Target are as ParseSource and ParseTarget accept them. A
	// source outside the cluster (ip/A.B.C.D) needs Live.
	Source, Target string
	// Proto is tcp, udp or icmp; empty takes the service port's, or tcp.
	Proto string
	// Port is the destination port when Target does not name one.
	Port uint16
	// Live waits for the source pod's own packet instead of a probe.
	Live bool
	// Timeout bounds the wait for the answer, or live for the first
	// packet; DefaultTimeout when zero.
	Timeout time.Duration
	// ArmTimeout bounds the wait for the agents to arm; DefaultArmTimeout
	// when zero.
	ArmTimeout time.Duration
	// Pcap, when set, receives the packets of every node, merged, as pcapng.
	Pcap io.Writer
	// Progress, when set, is told what the trace is doing:
	// "arming on k8s-w1, k8s-w2".
	Progress func(string)
	// Lookup, when set, receives the path of the DNS lookup that resolves
	// a DNS target, before that target is traced.
	Lookup func(*trace.Path)
	// Armed, when set, is called once the agents have armed (or the arm
	// timeout passed): the probe is then on its way, or a live trace waits
	// for the traffic, which is the moment to send it.
	Armed func()
}

// Run traces one flow across the cluster: it resolves the source pod and
// the target, creates a NetTrace for the agents of the nodes involved,
// waits until they have armed, probed and reported, correlates their hops
// into one path, and deletes the NetTrace, also when ctx ends. A DNS
// target is looked up first, by tracing the DNS query from the source
// pod; the flow to the answer is traced then.
//
// A source outside the cluster sends its own traffic: the trace is live,
// to a node port or a load balancer's address, and led by the agent of
// the node the traffic enters by (see outsideTarget).
//
// A node whose agent took part but did not report (it was killed during
// the trace) leaves a gap, which the path's losses (Source AgentSource)
// name. Errors match ErrInvalid, ErrCannotRun or ErrForbidden, or are
// ctx's; a path may come with ErrCannotRun when a node had no agent.
func Run(ctx context.Context, opts Options) (*trace.Path, error) {
	req, err := parseRequest(opts)
	if err != nil {
		return nil, err
	}
	r := &resolver{kube: opts.Kube, namespace: opts.Namespace}
	if req.source.Outside() {
		target, proto, entry, err := r.outsideTarget(ctx, req)
		if err != nil {
			return nil, err
		}
		t := &tracer{opts: opts, client: NewClient(opts.Dynamic), src: source{ip: req.source.Addr, node: entry}}
		return t.trace(ctx, target, proto)
	}
	src, err := r.sourcePod(ctx, req.source.Pod)
	if err != nil {
		return nil, err
	}
	target, proto, err := r.target(ctx, req)
	if err != nil {
		return nil, err
	}
	t := &tracer{opts: opts, client: NewClient(opts.Dynamic), src: src}
	if target.Kind != TargetDNS {
		return t.trace(ctx, target, proto)
	}

	lookup, answer, err := t.lookup(ctx, target)
	if err != nil {
		return lookup, err
	}
	if opts.Lookup != nil {
		opts.Lookup(lookup)
	}
	req.target = TargetRef{Given: req.target.Given, Kind: TargetIP, Addr: answer, Port: req.target.Port}
	if target, proto, err = r.target(ctx, req); err != nil {
		return nil, err
	}
	return t.trace(ctx, target, proto)
}

// parseRequest checks the options that need no API server.
func parseRequest(opts Options) (request, error) {
	var req request
	var err error
	if req.source, err = ParseSource(opts.Source); err != nil {
		return req, err
	}
	if req.target, err = ParseTarget(opts.Target); err != nil {
		return req, err
	}
	if opts.Proto != "" {
		if req.proto, err = trace.ParseProto(opts.Proto); err != nil {
			return req, invalidf("--proto: %w", err)
		}
	}
	req.port = opts.Port
	if opts.Namespace == "" {
		return req, invalidf("no namespace: give one with -n")
	}
	if req.source.Outside() && !opts.Live {
		return req, invalidf("source %q is outside the cluster, where no probe can be sent from: "+
			"trace its own traffic with --live", req.source.Given)
	}
	return req, nil
}

// tracer runs the NetTraces of one Run.
type tracer struct {
	opts   Options
	client *Client
	src    source
}

// lookup traces the DNS query of a DNS target from the source pod and
// returns its path and the first IPv4 address of the answer.
func (t *tracer) lookup(ctx context.Context, target Target) (*trace.Path, netip.Addr, error) {
	path, probe, err := t.run(ctx, target, trace.UDP)
	if err != nil {
		return path, netip.Addr{}, err
	}
	answer := probe.DNS
	if answer == nil {
		return path, netip.Addr{}, invalidf("the DNS lookup of %s got no answer: %s", target.Name, probe.Reply)
	}
	for _, a := range answer.Answers {
		if v, ok := strings.CutPrefix(a, "A "); ok {
			if ip, err := netip.ParseAddr(strings.TrimSpace(v)); err == nil {
				return path, ip, nil
			}
		}
	}
	return path, netip.Addr{}, invalidf("%s did not resolve to an IPv4 address: %s %v", target.Name, answer.Rcode, answer.Answers)
}

// trace runs one NetTrace to target and returns its path.
func (t *tracer) trace(ctx context.Context, target Target, proto trace.Proto) (*trace.Path, error) {
	path, _, err := t.run(ctx, target, proto)
	return path, err
}

// run runs one NetTrace to target and returns its path and what the
// probe got back.
func (t *tracer) run(ctx context.Context, target Target, proto trace.Proto) (*trace.Path, ProbeStatus, error) {
	var probe ProbeStatus
	nt, err := t.newNetTrace(target, proto)
	if err != nil {
		return nil, probe, err
	}
	created, err := t.client.Create(ctx, nt)
	if err != nil {
		return nil, probe, createError(err, nt.Namespace)
	}
	defer func() {
		// Ctrl-C or not, the NetTrace goes; the agents then stop.
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = t.client.Delete(cleanup, created.Namespace, created.Name, created.UID)
	}()
	final, err := t.wait(ctx, created)
	if err != nil {
		return nil, probe, err
	}
	if final.Status.Probe != nil {
		probe = *final.Status.Probe
	}
	path, missing := pathOf(final)
	if t.opts.Pcap != nil {
		if err := mergePcaps(t.opts.Pcap, final); err != nil {
			return &path, probe, cannotRunf("writing the pcapng file: %w", err)
		}
	}
	if len(missing) > 0 {
		return &path, probe, cannotRunf("%s", strings.Join(missing, "; "))
	}
	return &path, probe, nil
}

// createError explains why the NetTrace could not be created.
func createError(err error, namespace string) error {
	if apierrors.IsNotFound(err) {
		return cannotRunf("the API server does not serve %s.%s: apply deploy/crds/nettrace.yaml and deploy/agent/: %w",
			Resource.Resource, Group, err)
	}
	if apierrors.IsInvalid(err) {
		return cannotRunf("the API server refused the NetTrace, whose schema may be older than this plugin: "+
			"apply deploy/crds/nettrace.yaml of this version: %w", err)
	}
	return apiError(err, "create", Resource.Resource+"."+Group, namespace)
}

// newNetTrace builds the NetTrace that asks for a trace to target.
func (t *tracer) newNetTrace(target Target, proto trace.Proto) (*NetTrace, error) {
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("naming the NetTrace: %w", err)
	}
	name := "trace-" + t.src.name()
	if len(name) > 50 {
		name = name[:50]
	}
	mode := ModeProbe
	if t.opts.Live {
		mode = ModeLive
	}
	timeout := t.opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	nt := &NetTrace{
		ObjectMeta: metav1.ObjectMeta{
			Name:      strings.TrimRight(name, "-.") + "-" + hex.EncodeToString(suffix),
			Namespace: t.opts.Namespace,
			Labels:    map[string]string{Group + "/source": t.src.name()},
		},
		Spec: Spec{
			SourceNode: t.src.node,
			Target:     target,
			Flow:       FlowSpec{Proto: proto, Dst: target.Address, DstPort: target.Port},
			Mode:       mode,
			Timeout:    metav1.Duration{Duration: timeout},
			Nodes:      involvedNodes(t.src.node, target),
			Pcap:       t.opts.Pcap != nil,
		},
	}
	if t.src.pod != nil {
		nt.Spec.Source = t.src.pod.Name
	} else {
		nt.Spec.SourceIP = t.src.ip.String()
	}
	if proto == trace.ICMP {
		nt.Spec.Flow.DstPort = 0
	}
	if t.opts.ArmTimeout > 0 {
		nt.Spec.ArmTimeout = metav1.Duration{Duration: t.opts.ArmTimeout}
	}
	return nt, nil
}

// answerSlack is how much longer than the agents the plugin waits, for
// their last status write to reach it.
const answerSlack = 2 * time.Second

// wait follows the NetTrace until it is done or failed, until its deadline
// or the collect grace after the probe's answer (an agent then did not
// report), or until its source agent has not armed within the arm
// timeout: then no agent answered for the source node, and the trace
// cannot run.
func (t *tracer) wait(ctx context.Context, nt *NetTrace) (*NetTrace, error) {
	start := time.Now()
	armBy := time.NewTimer(nt.ArmTimeout() + answerSlack)
	defer armBy.Stop()
	deadline := time.NewTimer(time.Until(nt.Deadline(start).Add(answerSlack)))
	defer deadline.Stop()

	latest := nt
	collecting, armed := false, false
	t.progress(latest)
	var w watch.Interface
	defer func() {
		if w != nil {
			w.Stop()
		}
	}()
	for {
		if w == nil {
			var err error
			if w, err = t.client.Watch(ctx, nt.Namespace, nt.Name, latest.ResourceVersion); err != nil {
				return nil, apiError(err, "watch", Resource.Resource+"."+Group, nt.Namespace)
			}
		}
		select {
		case ev, ok := <-w.ResultChan():
			if !ok || ev.Type == watch.Error {
				// The watch ended or fell behind: read the object again
				// and watch from there.
				w.Stop()
				w = nil
				if latest, ok = t.reread(ctx, latest); !ok {
					return nil, cannotRunf("NetTrace %s/%s was deleted during the trace", nt.Namespace, nt.Name)
				}
				continue
			}
			if ev.Type == watch.Deleted {
				return nil, cannotRunf("NetTrace %s/%s was deleted during the trace", nt.Namespace, nt.Name)
			}
			if updated, err := fromEvent(ev); err == nil && updated.UID == nt.UID {
				latest = updated
			}
		case <-armBy.C:
			if e := latest.Status.Node(nt.Spec.SourceNode); !latest.Status.Final() && (e == nil || !e.Armed && e.Error == "") {
				return nil, cannotRunf("node %s: no nettrace agent answered within %s", nt.Spec.SourceNode, nt.ArmTimeout())
			}
			continue
		case <-deadline.C:
			if reread, ok := t.reread(ctx, latest); ok {
				latest = reread
			}
			return latest, failure(latest)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		t.progress(latest)
		if !armed && latest.Status.Probe != nil {
			armed = true
			if t.opts.Armed != nil {
				t.opts.Armed()
			}
		}
		if latest.Status.Final() || latest.Complete() {
			return latest, failure(latest)
		}
		if p := latest.Status.Probe; !collecting && p != nil && !p.Finished.IsZero() {
			// The probe is done: the agents report within the grace, or
			// are missing.
			collecting = true
			deadline.Reset(min(CollectGrace+answerSlack, time.Until(nt.Deadline(start).Add(answerSlack))))
		}
	}
}

// reread reads the NetTrace again; false when it is gone.
func (t *tracer) reread(ctx context.Context, nt *NetTrace) (*NetTrace, bool) {
	got, err := t.client.Get(ctx, nt.Namespace, nt.Name)
	if err != nil {
		return nt, !apierrors.IsNotFound(err)
	}
	return got, got.UID == nt.UID
}

// fromEvent decodes the NetTrace of a watch event.
func fromEvent(ev watch.Event) (*NetTrace, error) {
	u, ok := ev.Object.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in a watch event", ev.Object)
	}
	return FromUnstructured(u)
}

// failure is the error of a failed NetTrace, by its reason.
func failure(nt *NetTrace) error {
	if nt.Status.Phase != PhaseFailed {
		return nil
	}
	msg := nt.Status.Message
	if msg == "" {
		msg = "the trace failed without saying why"
	}
	if nt.Status.Reason == ReasonInvalid {
		return invalidf("%s", msg)
	}
	return cannotRunf("%s", msg)
}

// progress tells Options.Progress what the trace is waiting for.
func (t *tracer) progress(nt *NetTrace) {
	if t.opts.Progress == nil {
		return
	}
	var waiting []string
	switch nt.Status.Phase {
	case "", PhasePending:
		t.opts.Progress("waiting for the agent on " + nt.Spec.SourceNode)
	case PhaseArming:
		for _, n := range nt.Spec.Nodes {
			if e := nt.Status.Node(n); e == nil || !e.Armed && e.Error == "" {
				waiting = append(waiting, n)
			}
		}
		t.opts.Progress("arming on " + strings.Join(waiting, ", "))
	case PhaseRunning:
		if nt.Status.Flow != nil && nt.Spec.Mode == ModeProbe {
			t.opts.Progress("probing " + nt.Status.Flow.String())
		} else if nt.Spec.SourceIP != "" {
			t.opts.Progress("waiting for " + nt.Spec.SourceIP + " to send to " + net.JoinHostPort(nt.Spec.Flow.Dst, fmt.Sprint(nt.Spec.Flow.DstPort)))
		} else {
			t.opts.Progress("waiting for the pod's own packet")
		}
	case PhaseCollecting:
		for _, n := range nt.Spec.Nodes {
			if e := nt.Status.Node(n); e != nil && e.Armed && !e.Done {
				waiting = append(waiting, n)
			}
		}
		t.opts.Progress("collecting from " + strings.Join(waiting, ", "))
	}
}

// pathOf correlates the hops of every node of a finished NetTrace into
// its path. A node whose agent never answered, failed, or did not report
// gets a loss; the first kind is also returned, for the error.
func pathOf(nt *NetTrace) (trace.Path, []string) {
	flow := trace.Flow{Proto: nt.Spec.Flow.Proto, DstPort: uint16(nt.Spec.Flow.DstPort)}
	flow.Dst, _ = netip.ParseAddr(nt.Spec.Flow.Dst)
	if nt.Status.Flow != nil {
		flow = *nt.Status.Flow
	}
	in := correlate.Input{Flow: flow, Nodes: nt.Spec.Nodes}
	var missing []string
	for _, node := range nt.Spec.Nodes {
		e := nt.Status.Node(node)
		if e != nil {
			in.Hops = append(in.Hops, e.Hops...)
			in.Lost = append(in.Lost, e.Losses...)
		}
		loss := trace.Loss{Node: node, Source: AgentSource, Count: 1}
		switch {
		case e == nil || !e.Armed && e.Error == "":
			loss.Detail = fmt.Sprintf("no nettrace agent answered within %s: nothing was traced on %s", nt.ArmTimeout(), node)
			missing = append(missing, fmt.Sprintf("node %s: no nettrace agent answered within %s", node, nt.ArmTimeout()))
		case e.Error != "":
			loss.Detail = fmt.Sprintf("the nettrace agent on %s: %s", node, e.Error)
		case !e.Done:
			loss.Detail = fmt.Sprintf("the nettrace agent on %s armed but did not report its hops (it stopped or was killed during the trace): the path misses what happened there", node)
		default:
			continue
		}
		in.Lost = append(in.Lost, loss)
	}
	for _, ep := range nt.Spec.Target.Endpoints {
		addr, err := netip.ParseAddr(ep.Address)
		if err != nil {
			continue
		}
		in.Destinations = append(in.Destinations, correlate.Endpoint{
			Name: cmp.Or(ep.Pod, ep.Address), Addr: addr, Node: ep.Node, Netns: ep.Pod,
		})
	}
	if p := nt.Status.Probe; p != nil {
		in.Started, in.Finished = p.Started, p.Finished
		if p.Result != "" {
			in.Answer = &correlate.Answer{Result: p.Result, Reply: p.Reply}
		}
	}
	if flow.SrcPort == 0 {
		in.Hops = nil // no packet of the flow was seen
	}
	return correlate.Correlate(in), missing
}

// mergePcaps writes the pcapng of every node that sent one, merged.
func mergePcaps(w io.Writer, nt *NetTrace) error {
	var inputs []io.Reader
	for _, n := range nt.Spec.Nodes {
		if e := nt.Status.Node(n); e != nil && len(e.Pcap) > 0 {
			inputs = append(inputs, bytes.NewReader(e.Pcap))
		}
	}
	if len(inputs) == 0 {
		return errors.New("no node sent its packets")
	}
	return pcapng.Merge(w, inputs...)
}
