// Package conntrack reports the NAT that conntrack applies to a traced flow:
// a trace.Source that dumps the conntrack table of the current network
// namespace when armed and then follows its events, and the pure functions
// that derive the rewrites and the flow after NAT from an entry's original
// and reply tuples.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// sourceName is the Source field of the hops this package emits.
const sourceName = "conntrack"

// defaultReadBuffer is the receive buffer asked for the event socket, so
// that a busy node's conntrack churn does not overrun it while a trace runs;
// the kernel caps it at net.core.rmem_max.
const defaultReadBuffer = 4 << 20

// Config says which flow a Source follows and how to label its hops.
type Config struct {
	// Node and Netns label the emitted hops.
	Node  string
	Netns string
	// Match selects the conntrack entries of the traced flow.
	Match trace.Match
}

// Source is a trace.Widener for the conntrack table of the network
// namespace it is armed in. It emits one HopNAT per rewrite of each
// matching entry, once, whether the entry was found by the dump at arm
// time, by a dump when its match widened, or by a new, update or destroy
// event. When the kernel drops events because the socket overran
// (ENOBUFS), it counts a loss and dumps the table again so that no entry is
// missed for good.
type Source struct {
	cfg        Config
	readBuffer int
	// dumping serializes the dumps of the reader (after an overrun) and
	// of Widen on the query socket.
	dumping sync.Mutex

	events        *netfilter.Conn
	queries       *ct.Conn
	restoreEvents func() error
	emit          func(trace.Hop)
	closing       atomic.Bool
	reading       sync.WaitGroup

	// mu guards cfg.Match and what follows.
	mu          sync.Mutex
	seen        map[natKey]bool
	overruns    int
	undecodable int
	failure     error
}

// natKey identifies one rewrite of one conntrack entry.
type natKey struct {
	id       uint32
	typ      string
	original trace.Tuple
	reply    trace.Tuple
}

var _ trace.Widener = (*Source)(nil)

// New returns a Source for cfg. It does nothing until Arm.
func New(cfg Config) *Source {
	return &Source{cfg: cfg, readBuffer: defaultReadBuffer, seen: map[natKey]bool{}}
}

// Arm enables conntrack events in the current netns if they are off,
// subscribes to new, update and destroy events, dumps the table once and
// starts reading events. The sockets stay in the netns Arm was called in.
func (s *Source) Arm(ctx context.Context, emit func(trace.Hop)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.emit = emit
	var err error
	if s.queries, err = ct.Dial(nil); err != nil {
		return fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	if s.restoreEvents, err = enableEvents(); err != nil {
		s.queries.Close()
		return err
	}
	if err := s.subscribe(); err != nil {
		return errors.Join(err, s.release())
	}
	// Subscribe before dumping: an entry created in between is then seen
	// twice, never missed.
	if err := s.dump(); err != nil {
		return errors.Join(err, s.release())
	}
	s.reading.Add(1)
	go s.read()
	return nil
}

// subscribe opens the event socket and joins the new, update and destroy
// groups.
func (s *Source) subscribe() error {
	var err error
	if s.events, err = netfilter.Dial(nil); err != nil {
		return fmt.Errorf("opening conntrack event socket: %w", err)
	}
	if err := s.events.SetReadBuffer(s.readBuffer); err != nil {
		return fmt.Errorf("sizing conntrack event socket buffer: %w", err)
	}
	if err := s.events.JoinGroups(netfilter.GroupsCT); err != nil {
		return fmt.Errorf("subscribing to conntrack events: %w", err)
	}
	return nil
}

// Widen makes the source follow the entries that m matches, and dumps the
// table for those that were made before: their new event went by unseen.
func (s *Source) Widen(m trace.Match) error {
	if s.closing.Load() {
		return errors.New("widening conntrack: closed")
	}
	s.mu.Lock()
	s.cfg.Match = m
	s.mu.Unlock()
	if err := s.dump(); err != nil {
		return fmt.Errorf("widening conntrack: %w", err)
	}
	return nil
}

// dump reports the matching entries that are in the table now.
func (s *Source) dump() error {
	s.dumping.Lock()
	defer s.dumping.Unlock()
	if s.queries == nil {
		return errors.New("dumping conntrack table: closed")
	}
	entries, err := s.queries.Dump(nil)
	if err != nil {
		return fmt.Errorf("dumping conntrack table: %w", err)
	}
	now := time.Now()
	for _, e := range entries {
		s.report(e, now)
	}
	return nil
}

// read passes events to report until Close.
func (s *Source) read() {
	defer s.reading.Done()
	for {
		msgs, err := s.events.Receive()
		if s.closing.Load() {
			return
		}
		if errors.Is(err, unix.ENOBUFS) {
			s.overran()
			continue
		}
		if err != nil {
			s.mu.Lock()
			s.failure = fmt.Errorf("reading conntrack events: %w", err)
			s.mu.Unlock()
			return
		}
		now := time.Now()
		for _, m := range msgs {
			var ev ct.Event
			if err := ev.Unmarshal(m); err != nil {
				s.mu.Lock()
				s.undecodable++
				s.mu.Unlock()
				continue
			}
			if ev.Flow != nil {
				s.report(*ev.Flow, now)
			}
		}
	}
}

// overran counts an event socket overrun and dumps the table again to
// recover the entries whose events were dropped.
func (s *Source) overran() {
	s.mu.Lock()
	s.overruns++
	s.mu.Unlock()
	if err := s.dump(); err != nil {
		s.mu.Lock()
		s.failure = err
		s.mu.Unlock()
	}
}

// report emits the rewrites of entry that match and were not reported yet.
func (s *Source) report(entry ct.Flow, seenAt time.Time) {
	original, reply, err := Tuples(entry)
	if err != nil {
		return
	}
	s.mu.Lock()
	m := s.cfg.Match
	s.mu.Unlock()
	if !matches(m, original, reply) {
		return
	}
	at := seenAt
	if !entry.Timestamp.Start.IsZero() {
		at = entry.Timestamp.Start
	}
	for _, nat := range NATs(original, reply) {
		key := natKey{id: entry.ID, typ: nat.Type, original: original, reply: reply}
		s.mu.Lock()
		fresh := !s.seen[key]
		s.seen[key] = true
		s.mu.Unlock()
		if !fresh {
			continue
		}
		s.emit(trace.Hop{
			Time:      at,
			Node:      s.cfg.Node,
			Netns:     s.cfg.Netns,
			Kind:      trace.HopNAT,
			Direction: trace.Request,
			Source:    sourceName,
			NAT:       &nat,
		})
	}
}

// Close stops reading events, restores the event setting Arm changed and
// reports overruns, undecodable events and a read failure as losses.
func (s *Source) Close() ([]trace.Loss, error) {
	s.closing.Store(true)
	var errs []error
	if s.events != nil {
		if err := s.events.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing conntrack event socket: %w", err))
		}
	}
	s.reading.Wait()
	s.events = nil
	errs = append(errs, s.release())

	s.mu.Lock()
	defer s.mu.Unlock()
	var lost []trace.Loss
	if s.overruns > 0 {
		lost = append(lost, trace.Loss{Node: s.cfg.Node, Source: sourceName, Count: s.overruns,
			Detail: fmt.Sprintf("the conntrack event socket overran %d times (ENOBUFS); the table was dumped again after each", s.overruns)})
	}
	if s.undecodable > 0 {
		lost = append(lost, trace.Loss{Node: s.cfg.Node, Source: sourceName, Count: s.undecodable,
			Detail: fmt.Sprintf("%d conntrack events could not be decoded", s.undecodable)})
	}
	if s.failure != nil {
		lost = append(lost, trace.Loss{Node: s.cfg.Node, Source: sourceName, Count: 1,
			Detail: fmt.Sprintf("stopped following conntrack: %v", s.failure)})
	}
	return lost, errors.Join(errs...)
}

// release closes the sockets that are still open and restores the event
// setting. The reader must not be running; a dump Widen runs is waited for.
func (s *Source) release() error {
	var errs []error
	if s.events != nil {
		if err := s.events.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing conntrack event socket: %w", err))
		}
		s.events = nil
	}
	s.dumping.Lock()
	defer s.dumping.Unlock()
	if s.queries != nil {
		if err := s.queries.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing conntrack netlink socket: %w", err))
		}
		s.queries = nil
	}
	if s.restoreEvents != nil {
		errs = append(errs, s.restoreEvents())
		s.restoreEvents = nil
	}
	return errors.Join(errs...)
}
