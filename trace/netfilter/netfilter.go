// Package netfilter traces the iptables and nftables rules that one flow's
// packets hit in one network namespace, on both backends: iptables-legacy
// (TRACE rules, events over nfnetlink_log) and nf_tables (nftrace, events
// over NFNLGRP_NFTRACE), and removes everything it added when it closes, or,
// after the tracer was killed, when CleanupStale or CleanupAll runs.
// docs/netfilter-trace.md describes both mechanisms and what is restored.
package netfilter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/nflogtrace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/nfttrace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// Backend names a netfilter backend.
type Backend string

// The backends, as trace.Rule.Backend names them.
const (
	Legacy Backend = "legacy"
	Nft    Backend = "nft"
)

// Sources, as trace.Hop.Source names them.
const (
	SourceNflog   = "nflog"
	SourceNftrace = "nftrace"
)

// Defaults and bounds of Options.
const (
	DefaultRate       = 100
	DefaultBurst      = 200
	DefaultReadBuffer = 4 << 20
	// MaxRate and MaxBurst are the most iptables' limit match takes.
	MaxRate  = 10000
	MaxBurst = 10000
)

// Options configure a Tracer.
type Options struct {
	// Node and Netns label the hops.
	Node  string
	Netns string
	// Match selects the traced packets. The tracer handles IPv4.
	Match trace.Match
	// Backends are the backends to trace; empty means those that hold rules
	// in the namespace when Arm runs.
	Backends []Backend
	// Rate and Burst limit how many packets per second each rule of the
	// marker marks.
	Rate  int
	Burst int
	// ReadBuffer is the receive buffer of the event sockets, in bytes.
	ReadBuffer int
}

// Tracer follows one flow through the netfilter rules of one network
// namespace. It implements trace.Widener: Widen adds to its marker what the
// wider match selects.
type Tracer struct {
	opts    Options
	session Session
	// match is the match the marker selects, opts.Match widened: the
	// event readers read it, Widen replaces it.
	match atomic.Pointer[trace.Match]
	// widening serializes Widen and Close; closed is set by Close.
	widening sync.Mutex
	closed   bool

	netns   *netnsHandle
	rules   *ruleset.Reader
	links   *linkNames
	backend struct{ legacy, nft bool }
	// armed says which marker Arm put in place: one only, since
	// skb->nf_trace set by either makes both backends report.
	armed struct{ legacy, nft bool }

	nflog   *nflogtrace.Reader
	nftrace *nfttrace.Reader
	nfLog   *nfLogBinding
	bound   bool

	emit      func(trace.Hop)
	packets   traceCache
	closeOnce sync.Once
}

var _ trace.Widener = (*Tracer)(nil)

// New returns a Tracer; Arm starts it.
func New(opts Options) (*Tracer, error) {
	if err := validateMatch(opts.Match); err != nil {
		return nil, err
	}
	for _, b := range opts.Backends {
		if b != Legacy && b != Nft {
			return nil, fmt.Errorf("unknown backend %q", b)
		}
	}
	if opts.Rate <= 0 {
		opts.Rate = DefaultRate
	}
	if opts.Rate > MaxRate {
		return nil, fmt.Errorf("rate %d/second above the %d/second iptables' limit match allows", opts.Rate, MaxRate)
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.Burst > MaxBurst {
		return nil, fmt.Errorf("burst %d above the %d iptables' limit match allows", opts.Burst, MaxBurst)
	}
	if opts.ReadBuffer <= 0 {
		opts.ReadBuffer = DefaultReadBuffer
	}
	s, err := newSession()
	if err != nil {
		return nil, err
	}
	t := &Tracer{opts: opts, session: s}
	m := opts.Match.Clone()
	t.match.Store(&m)
	return t, nil
}

func validateMatch(m trace.Match) error {
	switch m.Proto {
	case trace.TCP, trace.UDP:
		if len(m.Ports) == 0 && len(m.Ends) == 0 {
			return fmt.Errorf("tracing %s needs a port or an end", m.Proto)
		}
		if slices.Contains(m.Ports, 0) {
			return fmt.Errorf("tracing %s: port 0 is no port", m.Proto)
		}
	case trace.ICMP:
		if len(m.Addrs) == 0 {
			return fmt.Errorf("tracing icmp needs an address")
		}
	default:
		return fmt.Errorf("cannot trace protocol %q", m.Proto)
	}
	for _, a := range m.Addrs {
		if !a.Is4() {
			return fmt.Errorf("cannot trace %s: only IPv4 is traced", a)
		}
	}
	for _, e := range m.Ends {
		if !e.Addr().Is4() {
			return fmt.Errorf("cannot trace %s: only IPv4 is traced", e)
		}
	}
	return nil
}

// Session returns the tracer's session, whose tag marks what it adds.
func (t *Tracer) Session() Session { return t.session }

// Backends returns the backends Arm found or was told to trace.
func (t *Tracer) Backends() []Backend {
	var bs []Backend
	if t.backend.legacy {
		bs = append(bs, Legacy)
	}
	if t.backend.nft {
		bs = append(bs, Nft)
	}
	return bs
}

// Arm starts tracing in the calling thread's network namespace. It opens the
// event sockets first, then binds nf_log to nfnetlink_log (legacy), then
// arms one marker (see armMarker). On error it removes what it added.
func (t *Tracer) Arm(ctx context.Context, emit func(trace.Hop)) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.emit = emit
	if t.netns, err = currentNetns(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_, cerr := t.Close()
			err = errors.Join(err, cerr)
		}
	}()
	if err := t.chooseBackends(); err != nil {
		return err
	}
	t.rules = ruleset.NewReader(t.netns.output, t.backend.legacy, t.backend.nft)
	if t.links, err = newLinkNames(t.netns); err != nil {
		return err
	}
	if t.backend.nft {
		if err := t.startNftrace(); err != nil {
			return err
		}
	}
	if t.backend.legacy {
		if err := t.startNflog(); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.armMarker(); err != nil {
		return err
	}
	if err := t.rules.Refresh(); err != nil {
		return fmt.Errorf("reading rulesets: %w", err)
	}
	return nil
}

// chooseBackends takes the backends from Options, or finds those that hold
// rules: legacy tables with rules, chains or policies of their own, or
// nf_tables tables other than nettrace's. A node without the command of a
// backend is taken to have no rules there.
func (t *Tracer) chooseBackends() error {
	if len(t.opts.Backends) > 0 {
		t.backend.legacy = slices.Contains(t.opts.Backends, Legacy)
		t.backend.nft = slices.Contains(t.opts.Backends, Nft)
		return nil
	}
	save, err := readLegacy(t.netns)
	if err != nil && !commandMissing(err) {
		return err
	}
	tables, err := listNftTables(t.netns)
	if err != nil && !commandMissing(err) {
		return err
	}
	t.backend.legacy = save != nil && legacyHasRules(save)
	t.backend.nft = nftHasRules(tables)
	return nil
}

func (t *Tracer) startNftrace() error {
	r, err := nfttrace.Open(nfttrace.Config{NetNS: t.netns.fd(), ReadBuffer: t.opts.ReadBuffer})
	if err != nil {
		return err
	}
	t.nftrace = r
	r.Start(t.onNftEvent)
	return nil
}

func (t *Tracer) startNflog() error {
	r, err := nflogtrace.Open(nflogtrace.Config{NetNS: t.netns.fd(), ReadBuffer: t.opts.ReadBuffer})
	if err != nil {
		return err
	}
	t.nflog = r
	if err := r.Start(t.onLegacyEvent); err != nil {
		return fmt.Errorf("%w (does another tracer or nflog listener hold group 0 in this network namespace?)", err)
	}
	if t.nfLog, err = newNfLogBinding(t.netns); err != nil {
		return err
	}
	if err := t.nfLog.bind(t.session); err != nil {
		return err
	}
	t.bound = true
	return nil
}

// armMarker arms the nft table when nf_tables is traced. For legacy alone it
// arms the TRACE rules when the legacy raw table exists; when it does not,
// it prefers the nft table too, because a legacy table, once used, stays in
// the namespace until the namespace goes, while the nft table is removed
// whole. Both commands apply their input in one transaction: on error
// nothing was added.
func (t *Tracer) armMarker() error {
	if t.backend.nft {
		return t.armNftMarker()
	}
	if !t.backend.legacy {
		return nil
	}
	save, err := readLegacy(t.netns)
	if err != nil {
		return err
	}
	if _, ok := save.Tables["raw"]; !ok && t.armNftMarker() == nil {
		return nil
	}
	script := legacyArmScript(t.session, t.opts.Match, t.opts.Rate, t.opts.Burst)
	if _, err := t.netns.run(script, legacyRestore[0], legacyRestore[1:]...); err != nil {
		return fmt.Errorf("adding legacy TRACE rules: %w", err)
	}
	t.armed.legacy = true
	return nil
}

func (t *Tracer) armNftMarker() error {
	script := nftArmScript(t.session, t.opts.Match, t.opts.Rate, t.opts.Burst)
	if _, err := t.netns.run(script, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("adding nftrace table: %w", err)
	}
	t.armed.nft = true
	return nil
}

// Widen makes the tracer follow what m selects: it adds to the marker the
// TRACE rules (legacy) or set elements (nft) of what m holds and its match
// lacks, tagged as what Arm added and removed with it by Close and
// CleanupStale, and accepts the events of packets that m selects.
func (t *Tracer) Widen(m trace.Match) error {
	if err := validateMatch(m); err != nil {
		return fmt.Errorf("widening the netfilter tracer: %w", err)
	}
	t.widening.Lock()
	defer t.widening.Unlock()
	if t.closed || t.netns == nil {
		return errors.New("widening the netfilter tracer: not armed")
	}
	from := t.match.Load()
	switch {
	case t.armed.nft:
		if script := nftWidenScript(t.session, *from, m, t.opts.Rate, t.opts.Burst); script != "" {
			if _, err := t.netns.run(script, "nft", "-f", "-"); err != nil {
				return fmt.Errorf("widening the nftrace table: %w", err)
			}
		}
	case t.armed.legacy:
		if added := lacking(*from, m); len(added.Ports)+len(added.Ends)+len(added.Addrs) > 0 {
			script := legacyWidenScript(t.session, *from, m, t.opts.Rate, t.opts.Burst)
			if _, err := t.netns.run(script, legacyRestore[0], legacyRestore[1:]...); err != nil {
				return fmt.Errorf("widening the legacy TRACE rules: %w", err)
			}
		}
	}
	m = m.Clone()
	t.match.Store(&m)
	return nil
}

// portsNamed returns the ports m names, in order and each once: its ports
// and those of its ends. A packet with neither port among them can only be
// selected by an end without a port.
func portsNamed(m trace.Match) []uint16 {
	ports := slices.Clone(m.Ports)
	for _, e := range m.Ends {
		if e.Port() != 0 {
			ports = append(ports, e.Port())
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// lacking returns what match to holds and match from does not.
func lacking(from, to trace.Match) trace.Match {
	added := trace.Match{Proto: to.Proto}
	for _, p := range to.Ports {
		if !slices.Contains(from.Ports, p) && !slices.Contains(added.Ports, p) {
			added.Ports = append(added.Ports, p)
		}
	}
	for _, e := range to.Ends {
		if !slices.Contains(from.Ends, e) && !slices.Contains(added.Ends, e) {
			added.Ends = append(added.Ends, e)
		}
	}
	for _, a := range to.Addrs {
		if !slices.Contains(from.Addrs, a) && !slices.Contains(added.Addrs, a) {
			added.Addrs = append(added.Addrs, a)
		}
	}
	return added
}

// Close removes the marker, stops the readers, restores the nf_log binding
// and reports the events the sockets lost. Emit is not called once Close
// returns. Calls after the first do nothing.
func (t *Tracer) Close() ([]trace.Loss, error) {
	var (
		losses []trace.Loss
		errs   []error
	)
	t.closeOnce.Do(func() {
		t.widening.Lock()
		t.closed = true
		t.widening.Unlock()
		if t.netns == nil {
			return
		}
		owned := map[string]bool{t.session.ID: true}
		if t.armed.nft {
			errs = append(errs, removeNftSession(t.netns, t.session))
		}
		if t.armed.legacy {
			errs = append(errs, removeLegacySessions(t.netns, owned))
		}
		if t.nftrace != nil {
			stats, err := t.nftrace.Close()
			errs = append(errs, err)
			losses = appendLoss(losses, t.nftraceLoss(stats))
		}
		if t.nflog != nil {
			stats, err := t.nflog.Close()
			errs = append(errs, err)
			losses = appendLoss(losses, t.nflogLoss(stats))
		}
		if t.bound {
			_, _, err := t.nfLog.restore(func(s Session) bool { return s.ID == t.session.ID })
			errs = append(errs, err)
		}
		if t.links != nil {
			t.links.close()
		}
		errs = append(errs, t.netns.close())
	})
	return losses, errors.Join(errs...)
}

// nflogLoss counts the events nflog lost: the gaps in its sequence numbers
// when later events showed them, else at least one per overrun.
func (t *Tracer) nflogLoss(s nflogtrace.Stats) trace.Loss {
	lost := max(s.Missing, s.Overruns) + s.Undecodable
	return trace.Loss{
		Node:   t.opts.Node,
		Source: SourceNflog,
		Count:  lost,
		Detail: fmt.Sprintf("%d receive buffer overruns (ENOBUFS); %d events missing from the nflog sequence; %d undecodable",
			s.Overruns, s.Missing, s.Undecodable),
	}
}

// nftraceLoss counts the events the nftrace socket lost: nf_tables trace
// events carry no sequence number, so at least one per overrun.
func (t *Tracer) nftraceLoss(s nfttrace.Stats) trace.Loss {
	return trace.Loss{
		Node:   t.opts.Node,
		Source: SourceNftrace,
		Count:  s.Overruns + s.Undecodable,
		Detail: fmt.Sprintf("%d receive buffer overruns (ENOBUFS), each losing one or more events; %d undecodable",
			s.Overruns, s.Undecodable),
	}
}

func appendLoss(losses []trace.Loss, l trace.Loss) []trace.Loss {
	if l.Count == 0 {
		return losses
	}
	return append(losses, l)
}
