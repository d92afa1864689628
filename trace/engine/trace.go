package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/correlate"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// Mode is how Trace gets the packet it follows.
type Mode string

// The modes of a trace.
const (
	// Probe sends one probe from the source pod: a TCP SYN, a UDP
	// datagram or an ICMP echo request.
	Probe Mode = "probe"
	// Live waits for the source pod to send the flow's packet itself.
	Live Mode = "live"
)

// DefaultTimeout is how long Trace waits for the answer to a probe, or in
// live mode for the first packet, when Request.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// How long Trace waits for what follows the answer.
const (
	// settleQuiet and settleLimit: the sources hand over their last events
	// a little after the packets went by; Trace stops once none came for
	// settleQuiet, at most settleLimit after the answer.
	settleQuiet = 30 * time.Millisecond
	settleLimit = 500 * time.Millisecond
	// liveReplyWait bounds the wait for the reply to reach the client once
	// a live packet was seen.
	liveReplyWait = 3 * time.Second
)

// Request is one on-node trace.
type Request struct {
	// Node labels the hops; the host name when empty.
	Node string
	// Netns is the path of the node's network namespace; empty means the
	// calling thread's.
	Netns string
	// Flow is the flow to follow: Src is a pod on this node, Dst and, for
	// TCP and UDP, DstPort where it sends to. SrcPort is chosen by the
	// probe, or taken from the first live packet.
	Flow trace.Flow
	// Mode is Probe (the default) or Live.
	Mode Mode
	// Timeout bounds the wait for the probe's answer, or in live mode for
	// the first packet; DefaultTimeout when zero.
	Timeout time.Duration
	// SourceNetns is the path of the source pod's network namespace;
	// route.FindPod finds it when empty.
	SourceNetns string
	// Pcap, when set, receives the captured packets as pcapng.
	Pcap io.Writer
	// FullPayload captures packets whole instead of their headers.
	FullPayload bool
	// MaxInterfaces bounds the node's captured interfaces (Config).
	MaxInterfaces int
	// Progress, when set, receives a line for each step: what was
	// cleaned up, armed, sent or awaited.
	Progress io.Writer
}

// withDefaults checks req and fills in its defaults.
func (req Request) withDefaults() (Request, error) {
	f := req.Flow
	if f.Src.Is6() || f.Dst.Is6() {
		return req, invalidError{ErrIPv6}
	}
	if !f.Src.Is4() || !f.Dst.Is4() {
		return req, invalidf("a trace needs a source and a destination address")
	}
	switch f.Proto {
	case trace.TCP, trace.UDP:
		if f.DstPort == 0 {
			return req, invalidf("tracing %s to %s needs a destination port", f.Proto, f.Dst)
		}
	case trace.ICMP:
		if f.DstPort != 0 {
			return req, invalidf("icmp has no port: trace %s without :%d", f.Dst, f.DstPort)
		}
	default:
		return req, invalidf("cannot trace protocol %q: want tcp, udp or icmp", f.Proto)
	}
	req.Flow.SrcPort = 0
	switch req.Mode {
	case "":
		req.Mode = Probe
	case Probe, Live:
	default:
		return req, invalidf("unknown trace mode %q: want probe or live", req.Mode)
	}
	if req.Timeout <= 0 {
		req.Timeout = DefaultTimeout
	}
	if req.Node == "" {
		name, err := os.Hostname()
		if err != nil {
			return req, fmt.Errorf("naming the node: %w", err)
		}
		req.Node = name
	}
	return req, nil
}

// Trace follows one flow on this node and returns its path. It finds the
// source pod's namespace (and the destination's, when it is a pod here),
// plans the probe there so that its port is known, arms a Session for it,
// sends the probe (or, live, waits up to Timeout for the flow's first packet
// and then for its reply), waits for the sources' last events, stops the
// session, correlates the hops and writes the pcapng file when asked.
//
// Every error that is the request's fault matches ErrInvalid. When ctx ends
// during the trace, the session is still stopped and restored, and Trace
// returns what was seen with an error wrapping ctx's.
func Trace(ctx context.Context, req Request) (trace.Path, error) {
	req, err := req.withDefaults()
	if err != nil {
		return trace.Path{}, err
	}
	node, err := openNetns(req.Netns)
	if err != nil {
		return trace.Path{}, err
	}
	defer node.Close()

	// Both ends are looked for at once, each scan of the namespaces on a
	// thread of its own. A destination pod on this node is watched too; a
	// service or a pod elsewhere is not found here, which is no error.
	var (
		src, dst       route.Pod
		srcErr, dstErr error
		wg             sync.WaitGroup
	)
	wg.Go(func() {
		srcErr = node.Do(func(ns.NetNS) (err error) {
			src, err = localPod(req.Flow.Src, req.SourceNetns)
			return err
		})
	})
	wg.Go(func() {
		dstErr = node.Do(func(ns.NetNS) (err error) {
			dst, err = localPod(req.Flow.Dst, "")
			return err
		})
	})
	wg.Wait()
	if srcErr != nil {
		return trace.Path{}, srcErr
	}
	dstLocal := dstErr == nil

	t := &oneShot{req: req, progress: req.Progress}
	if req.Mode == Probe {
		// UniqueIn reaches the node's namespace through the handle held
		// open here, whether it was given by path or is the current one.
		unique := fmt.Sprintf("/proc/self/fd/%d", node.Fd())
		if t.probe, err = planProbe(src.Netns, req, unique); err != nil {
			return trace.Path{}, err
		}
		defer t.probe.Close()
		t.flow = t.probe.Flow()
	}

	followed := req.Flow // live: the client's port is not known yet
	if t.probe != nil {
		followed = t.flow
	}
	match := matchOf(req.Flow, t.probe)
	var planned []netip.AddrPort
	err = node.Do(func(ns.NetNS) error {
		planned = plannedEnds(req.Flow)
		return nil
	})
	if err != nil {
		return trace.Path{}, err
	}
	match.Ends = append(match.Ends, planned...)
	cfg := Config{
		Node:           req.Node,
		Netns:          req.Netns,
		Match:          match,
		Flow:           followed,
		Watch:          []Watch{watchOf(src)},
		PathInterfaces: []string{src.HostVeth},
		MaxInterfaces:  req.MaxInterfaces,
		FullPayload:    req.FullPayload,
	}
	var dests []correlate.Endpoint
	if dstLocal && dst.Netns != src.Netns {
		cfg.Watch = append(cfg.Watch, watchOf(dst))
		cfg.PathInterfaces = append(cfg.PathInterfaces, dst.HostVeth)
		dests = append(dests, correlate.Endpoint{Name: podLabel(dst.IP), Addr: dst.IP, Node: req.Node,
			Netns: podLabel(dst.IP), HostVeth: dst.HostVeth})
	}
	// The DNAT destinations that are pods of this node are watched too, so
	// that their veths are captured inbound only, as the source's are.
	for _, pod := range localPods(node, otherAddrs(planned, src.IP, dst.IP)) {
		cfg.Watch = append(cfg.Watch, watchOf(pod))
		cfg.PathInterfaces = append(cfg.PathInterfaces, pod.HostVeth)
	}
	started := time.Now()
	t.started = started
	sess, err := Start(ctx, cfg)
	if err != nil {
		return trace.Path{}, err
	}
	t.armed(sess)

	answer, runErr := t.run(ctx, sess)
	if t.probe != nil && answer != nil && answer.Result != trace.NoAnswer {
		// The last of the answer's events is its capture in the client's
		// namespace, a block retirement after the socket got it.
		wait, cancel := context.WithTimeout(ctx, settleLimit)
		sess.Await(wait, t.answerAtClient())
		cancel()
	}
	sess.Settle(settleQuiet, settleLimit)
	collected, stopErr := sess.Stop(t.flow)
	finished := time.Now()

	in := correlate.Input{
		Flow:         t.flow,
		Hops:         ofFlow(t.flow, collected.Hops),
		Lost:         collected.Lost,
		Nodes:        []string{req.Node},
		Destinations: dests,
		Answer:       answer,
		Started:      started,
		Finished:     finished,
	}
	if t.flow.SrcPort == 0 {
		in.Flow, in.Hops = req.Flow, nil // no packet of the flow was seen
	}
	path := correlate.Correlate(in)
	var pcapErr error
	if req.Pcap != nil {
		if err := collected.WritePcap(req.Pcap, &path); err != nil {
			pcapErr = fmt.Errorf("writing the pcapng file: %w", err)
		}
	}
	return path, errors.Join(runErr, stopErr, pcapErr)
}

// oneShot is the state of one Trace.
type oneShot struct {
	req      Request
	progress io.Writer
	probe    *probe.Probe
	// flow is the traced flow; its SrcPort is zero until known.
	flow trace.Flow
	// started is when arming began: a live flow's first packet is looked
	// for from then on.
	started time.Time
}

// planProbe plans the probe in the source pod's namespace, with a port
// that is free there and in the node's namespace.
func planProbe(netns string, req Request, nodeNetns string) (*probe.Probe, error) {
	spec := probe.Spec{
		Kind:     probe.Kind(req.Flow.Proto),
		Src:      req.Flow.Src,
		Dst:      req.Flow.Dst,
		DstPort:  req.Flow.DstPort,
		Timeout:  req.Timeout,
		UniqueIn: []string{nodeNetns},
	}
	var p *probe.Probe
	err := withNetnsPath(netns, func() error {
		var err error
		p, err = probe.Plan(spec)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("planning the probe in %s: %w", podLabel(req.Flow.Src), err)
	}
	return p, nil
}

// matchOf selects the flow in the sources. A probe is selected by its
// unique source port (for ICMP, its echo identifier and the two addresses)
// and by its destination, so that a MASQUERADE that gives it another source
// port does not hide it from the first packet on. Live, the client's port
// is not known: the flow is selected by its destination port (for ICMP, the
// two addresses). Trace adds the destinations the node's rules may DNAT the
// flow to (plannedEnds), and the session learns more from the connections
// to the same destination that conntrack reports.
func matchOf(flow trace.Flow, p *probe.Probe) trace.Match {
	if flow.Proto == trace.ICMP {
		m := trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{flow.Src, flow.Dst}}
		if p != nil {
			m.Ports = []uint16{p.Flow().SrcPort}
		}
		return m
	}
	if p == nil {
		return trace.Match{Proto: flow.Proto, Ports: []uint16{flow.DstPort}}
	}
	return trace.Match{Proto: flow.Proto, Ports: []uint16{p.Flow().SrcPort},
		Ends: []netip.AddrPort{netip.AddrPortFrom(flow.Dst, flow.DstPort)}}
}

// armed reports the armed session.
func (t *oneShot) armed(s *Session) {
	for _, st := range s.Stale {
		t.say("removed what dead tracer session %s (pid %d, started %s) left on %s",
			st.ID, st.PID, st.Started.Format(time.RFC3339), t.req.Node)
	}
	var ifaces []string
	for _, c := range s.captures {
		name := c.name()
		if c.inbound {
			name += " (inbound)"
		}
		ifaces = append(ifaces, name)
	}
	backends := "no netfilter rules"
	if bs := s.tracer.Backends(); len(bs) > 0 {
		backends = fmt.Sprintf("netfilter %v", bs)
	}
	t.say("armed on %s: capturing on %s; conntrack; %s", t.req.Node, strings.Join(ifaces, ", "), backends)
}

func (t *oneShot) say(format string, args ...any) {
	if t.progress != nil {
		fmt.Fprintf(t.progress, format+"\n", args...)
	}
}

// run sends the probe, or waits for the live packet and its reply. It
// returns what the correlator is to know of the answer: the probe's; live,
// nothing, or that no packet came.
func (t *oneShot) run(ctx context.Context, s *Session) (*correlate.Answer, error) {
	if t.probe != nil {
		t.say("sending %s", t.flow)
		r, err := t.probe.Send(ctx)
		if err != nil {
			return nil, err
		}
		t.say("%s: %s", r.Answer, r.Reply)
		return &correlate.Answer{Result: r.Answer.Result(), Reply: r.Reply}, nil
	}

	want := t.req.Flow
	t.say("waiting up to %s for %s", t.req.Timeout, DescribeLive(want))
	deadline := time.Now().Add(t.req.Timeout)
	waitFirst, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	first, err := s.Await(waitFirst, StartsFlow(want, t.started))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		waited := fmt.Sprintf("no packet of %s within %s", DescribeLive(want), t.req.Timeout)
		t.say("%s", waited)
		return &correlate.Answer{Result: trace.NoAnswer, Reply: waited}, nil
	}
	t.flow = FlowOf(want, first)
	t.say("following %s", t.flow)
	replyBy := time.Now().Add(liveReplyWait)
	if deadline.Before(replyBy) {
		replyBy = deadline
	}
	waitReply, cancel := context.WithDeadline(ctx, replyBy)
	defer cancel()
	if _, err := s.Await(waitReply, t.answerAtClient()); err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, nil
}

// answerAtClient accepts the capture, in the client's namespace, of the
// reply to the flow or of an ICMP error sent to the client.
func (t *oneShot) answerAtClient() func(trace.Hop) bool {
	client := podLabel(t.flow.Src)
	return func(h trace.Hop) bool {
		p := h.Packet
		if h.Netns != client || h.Kind != trace.HopInterface || p == nil {
			return false
		}
		if p.Proto == trace.ICMP && p.ICMPType != icmpEchoRequest && p.ICMPType != icmpEchoReply {
			return p.Dst == t.flow.Src
		}
		return directionOf(t.flow, p) == trace.Reply
	}
}

// ofFlow leaves out the NAT hops of other flows, which a live trace's
// conntrack match on the destination port also reports, those of earlier
// connections among them: the correlator would take their tuples for forms
// of the traced flow.
func ofFlow(flow trace.Flow, hops []trace.Hop) []trace.Hop {
	out := make([]trace.Hop, 0, len(hops))
	for _, h := range hops {
		if h.NAT != nil && (h.NAT.Original.Proto != flow.Proto || h.NAT.Original.Src.Port() != flow.SrcPort) {
			continue
		}
		out = append(out, h)
	}
	return out
}
