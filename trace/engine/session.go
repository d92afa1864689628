package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/capture"
	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/conntrack"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter"
)

// Config says where a Session watches one flow.
type Config struct {
	// Node labels the hops.
	Node string
	// Netns is the path of the node's network namespace; empty means the
	// calling thread's.
	Netns string
	// Match selects the traced flow, in every source. It widens while the
	// session runs, to follow the flow across NAT (see Session).
	Match trace.Match
	// Flow is the flow followed, as its client sends it; its SrcPort is
	// zero until known (live). The rewrites that conntrack reports for
	// connections from its client, and port, widen the match; with no
	// flow, every rewrite that conntrack reports does. Live, the DNATs of
	// other connections to its destination add their endpoints.
	Flow trace.Flow
	// Watch lists other network namespaces to capture in, such as the
	// source pod's.
	Watch []Watch
	// PathInterfaces are interfaces of the node known to be on the path
	// (the pods' host veths): they are captured before any other.
	PathInterfaces []string
	// MaxInterfaces bounds the interfaces captured in the node's
	// namespace; DefaultMaxInterfaces when zero. Those beyond it are
	// reported as a loss.
	MaxInterfaces int
	// FullPayload keeps captured packets whole instead of their headers.
	FullPayload bool
}

// Watch is a network namespace other than the node's, watched by captures
// on each of its interfaces.
type Watch struct {
	// Path is the namespace's path, such as route.Pod.Netns.
	Path string
	// Label labels its hops: a pod as "namespace/name".
	Label string
	// HostVeth and Iface, when both are set, name the veth pair that
	// joins the namespace to the node: the node's end (cali…) and the
	// namespace's (eth0). Both ends are captured inbound only
	// (capture.Config.Inbound): what one end sends the other receives, so
	// each packet across the pair is still seen once, and the pod's other
	// traffic is not slowed by the clone that a capture of what an
	// interface sends costs.
	HostVeth, Iface string
}

// paired reports whether w names the veth pair that joins it to the node.
func (w Watch) paired() bool { return w.HostVeth != "" && w.Iface != "" }

// Session follows one flow on one node: from Start to Stop, the netfilter
// tracer and conntrack in the node's namespace and the captures there and
// in the watched namespaces pass their hops to it.
//
// The sources select the flow by its match. When conntrack reports a
// rewrite of the flow after which the match no longer selects it (a
// MASQUERADE that gave it a new source port, a DNAT to an address and port
// the match does not name), the session widens the match of every source
// with the end the rewrite introduced. The widening runs once conntrack
// reported the rewrite, a moment after the rewritten packet went by: it
// catches the packets that follow, the reply among them when it takes
// longer to come than the widening to apply. A match wide enough to select
// the first rewritten packet has to be armed with it, or, live, learned
// from the connections to the same destination that conntrack holds when
// the session arms.
type Session struct {
	cfg  Config
	node ns.NetNS
	// Stale are the sessions of dead tracers whose leftovers Start removed
	// from the node.
	Stale []netfilter.Session

	tracer    *netfilter.Tracer
	conntrack *conntrack.Source
	captures  []*nodeCapture
	skipped   []string

	widener *widener

	mu      sync.Mutex
	hops    []trace.Hop
	last    time.Time
	changed chan struct{} // closed and replaced when a hop arrives
	// match is what the sources select, or are about to once the
	// widener applied it: cfg.Match, widened.
	match trace.Match

	stopOnce  sync.Once
	collected *Collected
	stopErr   error
}

// nodeCapture is a capture and the namespace it runs in.
type nodeCapture struct {
	*capture.Capture
	node  string
	iface string
	// label is the watched namespace's label; empty for the node's own.
	label string
	// inbound says the capture sees only what the interface receives.
	inbound bool
}

// name names the captured interface: "eth0", or "default/client eth0" in a
// watched namespace.
func (c *nodeCapture) name() string {
	if c.label == "" {
		return c.iface
	}
	return c.label + " " + c.iface
}

// Start arms a session. In the node's namespace it removes what dead
// tracers left (netfilter.CleanupStale) and arms the netfilter tracer,
// arms conntrack, and opens captures on the interfaces of the path (pod
// veths, tunnel devices, underlay NICs); it opens captures on the
// interfaces of each watched namespace; then it starts the captures. Each
// of these runs at once, on a thread of its own inside its namespace, where
// the source's socket then stays. On error, what was armed is closed and
// restored.
func Start(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.MaxInterfaces <= 0 {
		cfg.MaxInterfaces = DefaultMaxInterfaces
	}
	node, err := openNetns(cfg.Netns)
	if err != nil {
		return nil, err
	}
	s := &Session{cfg: cfg, node: node, changed: make(chan struct{}), match: cfg.Match.Clone(), widener: newWidener()}
	if err := s.arm(ctx); err != nil {
		_, cerr := s.Stop(trace.Flow{})
		return nil, errors.Join(err, cerr)
	}
	return s, nil
}

// openNetns opens the namespace at path, or the calling thread's.
func openNetns(path string) (ns.NetNS, error) {
	if path == "" {
		n, err := ns.GetCurrentNS()
		if err != nil {
			return nil, fmt.Errorf("opening the current network namespace: %w", err)
		}
		return n, nil
	}
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, invalidf("opening network namespace %s: %w", path, err)
	}
	return n, nil
}

func (s *Session) arm(ctx context.Context) error {
	var nodeIfaces []string
	err := s.node.Do(func(ns.NetNS) error {
		var err error
		nodeIfaces, s.skipped, err = nodeInterfaces(s.cfg.PathInterfaces, s.cfg.MaxInterfaces)
		if err != nil {
			return fmt.Errorf("choosing the interfaces of %s: %w", s.cfg.Node, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	watched := make([][]string, len(s.cfg.Watch))
	count := len(nodeIfaces)
	for i, w := range s.cfg.Watch {
		err := withNetnsPath(w.Path, func() error {
			var err error
			watched[i], err = podInterfaces()
			return err
		})
		if err != nil {
			return fmt.Errorf("listing the interfaces of %s: %w", w.Label, err)
		}
		count += len(watched[i])
	}
	ring := ringSize(count)

	// The sources do not depend on each other: each is armed at once, on
	// a thread of its own in its namespace.
	groups := make([][]*nodeCapture, 1+len(s.cfg.Watch))
	errs := make([]error, 3+len(s.cfg.Watch))
	var wg sync.WaitGroup
	wg.Go(func() { errs[0] = s.node.Do(func(ns.NetNS) error { return s.armNetfilter(ctx) }) })
	wg.Go(func() { errs[1] = s.node.Do(func(ns.NetNS) error { return s.armConntrack(ctx) }) })
	wg.Go(func() {
		errs[2] = s.node.Do(func(ns.NetNS) error {
			var err error
			groups[0], err = s.openCaptures(nodeIfaces, "", ring, s.inboundHostVeths())
			return err
		})
	})
	for i, w := range s.cfg.Watch {
		wg.Go(func() {
			errs[3+i] = withNetnsPath(w.Path, func() error {
				var err error
				var inbound []string
				if w.paired() {
					inbound = []string{w.Iface}
				}
				groups[1+i], err = s.openCaptures(watched[i], w.Label, ring, inbound)
				return err
			})
		})
	}
	wg.Wait()
	for _, g := range groups {
		s.captures = append(s.captures, g...)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The captures queue packets in their rings from the moment they are
	// open; they read until Stop, whatever happens to ctx.
	for _, c := range s.captures {
		if err := c.Arm(context.WithoutCancel(ctx), s.emit); err != nil {
			return err
		}
	}
	// What conntrack's dump taught while arming is in place when Start
	// returns; the widener follows from there.
	applied := s.Match()
	if !sameMatch(applied, s.cfg.Match) {
		s.widener.apply(s, applied)
	}
	s.widener.start(s, applied)
	return nil
}

// armNetfilter removes, in the calling thread's namespace, what dead
// tracers left, whose rules and nf_log binding the new tracer would meet,
// and arms the netfilter tracer.
func (s *Session) armNetfilter(ctx context.Context) error {
	var err error
	if s.Stale, err = netfilter.CleanupStale(0); err != nil {
		return fmt.Errorf("removing what dead tracers left on %s: %w", s.cfg.Node, err)
	}
	tracer, err := netfilter.New(netfilter.Options{Node: s.cfg.Node, Match: s.cfg.Match})
	if err != nil {
		return invalidError{fmt.Errorf("tracing netfilter on %s: %w", s.cfg.Node, err)}
	}
	if err := tracer.Arm(ctx, s.emit); err != nil {
		return fmt.Errorf("arming the netfilter tracer on %s: %w", s.cfg.Node, err)
	}
	s.tracer = tracer
	return nil
}

// armConntrack follows conntrack in the calling thread's namespace.
func (s *Session) armConntrack(ctx context.Context) error {
	ct := conntrack.New(conntrack.Config{Node: s.cfg.Node, Match: s.cfg.Match})
	if err := ct.Arm(ctx, s.emit); err != nil {
		return fmt.Errorf("arming conntrack on %s: %w", s.cfg.Node, err)
	}
	s.conntrack = ct
	return nil
}

// withNetnsPath runs fn on a thread inside the namespace at path; a path
// that is not a namespace is the request's fault.
func withNetnsPath(path string, fn func() error) error {
	n, err := openNetns(path)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return fn() })
}

// openCaptures opens a capture on each interface, in the calling thread's
// namespace, labelled with the namespace's label; those named in inbound
// capture what they receive only. On error it returns those it opened, for
// Stop to close.
func (s *Session) openCaptures(ifaces []string, label string, ring int, inbound []string) ([]*nodeCapture, error) {
	var opened []*nodeCapture
	for _, iface := range ifaces {
		in := slices.Contains(inbound, iface)
		c, err := capture.Open(capture.Config{
			Iface:       iface,
			Node:        s.cfg.Node,
			Netns:       label,
			Match:       s.cfg.Match,
			FullPayload: s.cfg.FullPayload,
			RingSize:    ring,
			Inbound:     in,
		})
		if err != nil {
			where := s.cfg.Node
			if label != "" {
				where += " " + label
			}
			return opened, fmt.Errorf("arming the capture on %s: %w", where, err)
		}
		opened = append(opened, &nodeCapture{Capture: c, node: s.cfg.Node, iface: iface, label: label, inbound: in})
	}
	return opened, nil
}

// inboundHostVeths are the node's ends of the watched veth pairs, captured
// inbound only.
func (s *Session) inboundHostVeths() []string {
	var names []string
	for _, w := range s.cfg.Watch {
		if w.paired() {
			names = append(names, w.HostVeth)
		}
	}
	return names
}

// servers are the ends the request of flow may be addressed to on this
// node: its destination, and the ends the session was armed with (the
// agent arms with the target's endpoints), before any widening.
func (s *Session) servers(flow trace.Flow) []netip.AddrPort {
	ends := []netip.AddrPort{netip.AddrPortFrom(flow.Dst, flow.DstPort)}
	for _, e := range s.cfg.Match.Ends {
		if !slices.Contains(ends, e) {
			ends = append(ends, e)
		}
	}
	return ends
}

// emit collects a hop; the sources call it from their goroutines. A
// rewrite of the flow that the match does not follow widens it.
func (s *Session) emit(h trace.Hop) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hops = append(s.hops, h)
	s.last = time.Now()
	close(s.changed)
	s.changed = make(chan struct{})
	if h.Kind != trace.HopNAT || h.NAT == nil || h.Netns != "" {
		return
	}
	var m trace.Match
	var changed bool
	switch {
	case follows(s.cfg.Flow, h.NAT):
		m, changed = widened(s.match, h.NAT)
	case teaches(s.cfg.Flow, h.NAT):
		m, changed = learned(s.match, h.NAT)
	}
	if changed {
		s.match = m
		s.widener.wake()
	}
}

// Match returns what the sources select: the match they were armed with,
// widened to follow the rewrites of the flow reported so far.
func (s *Session) Match() trace.Match {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.match.Clone()
}

// Await waits until a hop that match accepts has been collected, and
// returns it. It returns ctx's error when ctx ends first.
func (s *Session) Await(ctx context.Context, match func(trace.Hop) bool) (trace.Hop, error) {
	next := 0
	for {
		s.mu.Lock()
		for ; next < len(s.hops); next++ {
			if h := s.hops[next]; match(h) {
				s.mu.Unlock()
				return h, nil
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return trace.Hop{}, ctx.Err()
		}
	}
}

// Settle waits until no hop has arrived for quiet, counted from the call
// at the earliest, and at most for limit: the sources hand over their
// events a little after the packets went by.
func (s *Session) Settle(quiet, limit time.Duration) {
	called := time.Now()
	deadline := called.Add(limit)
	for {
		s.mu.Lock()
		last := s.last
		s.mu.Unlock()
		if last.Before(called) {
			last = called
		}
		calm := time.Until(last.Add(quiet))
		left := time.Until(deadline)
		if calm <= 0 || left <= 0 {
			return
		}
		time.Sleep(min(calm, left))
	}
}

// Collected is what a session collected on its node.
type Collected struct {
	Node string
	// Hops are the hops of every source, in the order they arrived, and
	// the route lookups Stop added.
	Hops []trace.Hop
	// Lost are the events the sources could not deliver, and the
	// interfaces left out beyond Config.MaxInterfaces.
	Lost []trace.Loss
	// captures keep the raw packets, for WritePcap.
	captures []*nodeCapture
}

// Stop closes every source, restoring what they changed on the node, then
// looks up, in the node's namespace, the routes the request and the reply
// of flow take after the NAT this node's conntrack reported (see
// routeLookups). A zero flow skips the lookups. Stop always closes
// everything, and returns what was collected even with an error; later
// calls return what the first did.
func (s *Session) Stop(flow trace.Flow) (*Collected, error) {
	s.stopOnce.Do(func() { s.collected, s.stopErr = s.stop(flow) })
	return s.collected, s.stopErr
}

func (s *Session) stop(flow trace.Flow) (*Collected, error) {
	// No source widens once it is closing.
	lost := s.widener.stop()
	// Each source closes on its own; a capture waits a moment for its
	// last packets, so they close at once.
	type source struct {
		what  string
		close func() ([]trace.Loss, error)
	}
	var sources []source
	if s.tracer != nil {
		sources = append(sources, source{"the netfilter tracer", s.tracer.Close})
	}
	if s.conntrack != nil {
		sources = append(sources, source{"conntrack", s.conntrack.Close})
	}
	for _, c := range s.captures {
		sources = append(sources, source{"the capture on " + c.name(), c.Close})
	}
	losses := make([][]trace.Loss, len(sources))
	errs := make([]error, len(sources))
	var wg sync.WaitGroup
	for i, src := range sources {
		wg.Go(func() {
			if losses[i], errs[i] = src.close(); errs[i] != nil {
				errs[i] = fmt.Errorf("closing %s on %s: %w", src.what, s.cfg.Node, errs[i])
			}
		})
	}
	wg.Wait()
	lost = append(lost, slices.Concat(losses...)...)
	if len(s.skipped) > 0 {
		lost = append(lost, trace.Loss{
			Node:   s.cfg.Node,
			Source: "capture",
			Count:  len(s.skipped),
			Detail: fmt.Sprintf("not captured on %d interfaces beyond the bound of %d: %s",
				len(s.skipped), s.cfg.MaxInterfaces, strings.Join(s.skipped, ", ")),
		})
	}

	s.mu.Lock()
	hops := slices.Clone(s.hops)
	s.mu.Unlock()
	if flow.Src.IsValid() {
		var routes []trace.Hop
		err := s.node.Do(func(ns.NetNS) error {
			var l []trace.Loss
			routes, l = routeLookups(s.cfg.Node, flow, s.servers(flow), hops)
			lost = append(lost, l...)
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("looking up routes on %s: %w", s.cfg.Node, err))
		}
		hops = append(hops, routes...)
	}
	if err := s.node.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing the network namespace of %s: %w", s.cfg.Node, err))
	}
	return &Collected{Node: s.cfg.Node, Hops: hops, Lost: lost, captures: s.captures}, errors.Join(errs...)
}
