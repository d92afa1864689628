package engine

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// follows reports whether a rewrite that conntrack reported belongs to the
// session's flow: its connection comes from the flow's client port, which
// a MASQUERADE before this node may have given another address, or, while
// that port is not known (live), from the client's address. Without a
// flow, every rewrite of the match does.
func follows(flow trace.Flow, n *trace.NAT) bool {
	if !flow.Src.IsValid() {
		return true
	}
	client := n.Original.Src
	if n.Original.Proto != flow.Proto {
		return false
	}
	if flow.SrcPort != 0 {
		return client.Port() == flow.SrcPort
	}
	return client.Addr() == flow.Src
}

// teaches reports whether a rewrite of another connection shows where the
// session's live flow may be sent: a DNAT of a connection to the flow's
// destination, which picks one of the destination's endpoints.
func teaches(flow trace.Flow, n *trace.NAT) bool {
	return flow.Src.IsValid() && flow.SrcPort == 0 && n.Original.Proto == flow.Proto &&
		n.Original.Dst == netip.AddrPortFrom(flow.Dst, flow.DstPort) && n.Original.Dst != n.Reply.Src
}

// widened returns m widened to follow the flow across the rewrite n, and
// whether it changed. When m does not select the request as it leaves the
// rewrite (the inverse of the reply tuple), nor therefore its reply, m gains
// the end that the rewrite introduced: the source a SNAT gave the request,
// which is its connection's own, or else the destination a DNAT gave it.
// For ICMP, it gains that address.
func widened(m trace.Match, n *trace.NAT) (trace.Match, bool) {
	src, dst := n.Reply.Dst, n.Reply.Src
	if m.Covers(src, dst) {
		return m, false
	}
	snat := n.Original.Src != n.Reply.Dst
	dnat := n.Original.Dst != n.Reply.Src
	m = m.Clone()
	switch {
	case m.Proto == trace.ICMP && dnat:
		m.Addrs = append(m.Addrs, dst.Addr())
	case m.Proto == trace.ICMP:
		m.Addrs = append(m.Addrs, src.Addr())
	case snat:
		m.Ends = append(m.Ends, src)
	default:
		m.Ends = append(m.Ends, dst)
	}
	return m, true
}

// learned returns m widened with the endpoint that the DNAT n of another
// connection to the flow's destination picked, and whether it changed.
func learned(m trace.Match, n *trace.NAT) (trace.Match, bool) {
	endpoint := n.Reply.Src
	if m.HasEnd(endpoint) || slices.Contains(m.Ports, endpoint.Port()) {
		return m, false
	}
	m = m.Clone()
	m.Ends = append(m.Ends, endpoint)
	return m, true
}

// widener applies the session's match, whenever it widened, to every
// source, from a goroutine of its own: a source's Widen may run a command,
// which emit, called by the sources' readers, must not wait for.
type widener struct {
	kick chan struct{} // a wider match waits to be applied
	quit chan struct{}
	done chan struct{}

	mu      sync.Mutex
	started bool
	lost    []trace.Loss
}

func newWidener() *widener {
	return &widener{kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// wake tells the widener that the match widened.
func (w *widener) wake() {
	select {
	case w.kick <- struct{}{}:
	default: // a wake is pending; it applies the latest match
	}
}

// start applies the session's match to its sources each time it widens,
// from now until stop; applied is the match they were armed with. A wake
// before start is served at once.
func (w *widener) start(s *Session, applied trace.Match) {
	w.mu.Lock()
	w.started = true
	w.mu.Unlock()
	go w.run(s, applied)
}

func (w *widener) run(s *Session, applied trace.Match) {
	defer close(w.done)
	for {
		select {
		case <-w.kick:
		case <-w.quit:
			return
		}
		m := s.Match()
		if sameMatch(m, applied) {
			continue
		}
		w.apply(s, m)
		applied = m
	}
}

// apply widens every source to m at once, and keeps their failures as
// losses: a source that did not widen misses the rest of the flow.
func (w *widener) apply(s *Session, m trace.Match) {
	type source struct {
		kind, what string
		trace.Widener
	}
	var sources []source
	if s.tracer != nil {
		sources = append(sources, source{"netfilter", "the netfilter tracer", s.tracer})
	}
	if s.conntrack != nil {
		sources = append(sources, source{"conntrack", "conntrack", s.conntrack})
	}
	for _, c := range s.captures {
		sources = append(sources, source{"capture", "the capture on " + c.name(), c.Capture})
	}
	var wg sync.WaitGroup
	for _, src := range sources {
		wg.Go(func() {
			if err := src.Widen(m); err != nil {
				w.mu.Lock()
				defer w.mu.Unlock()
				w.lost = append(w.lost, trace.Loss{Node: s.cfg.Node, Source: src.kind, Count: 1,
					Detail: fmt.Sprintf("could not widen %s to follow a NAT rewrite, and may miss the rest of the flow: %v", src.what, err)})
			}
		})
	}
	wg.Wait()
}

// stop waits for the widening in progress, if any, and ends the widener;
// it returns the sources' failures to widen.
func (w *widener) stop() []trace.Loss {
	w.mu.Lock()
	started := w.started
	w.mu.Unlock()
	if started {
		close(w.quit)
		<-w.done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.lost)
}

// sameMatch reports whether two matches hold the same elements in the
// same order: the session only ever appends to its match.
func sameMatch(a, b trace.Match) bool {
	return a.Proto == b.Proto && slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Ends, b.Ends) &&
		slices.Equal(a.Addrs, b.Addrs)
}
