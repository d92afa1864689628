package nflogtrace

import (
	"context"
	"errors"
	"fmt"
	"sync"

	nflog "github.com/florianl/go-nflog/v2"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace/netfilter/internal/nlsock"
)

// copyRange is how many bytes of each packet the kernel copies: enough for
// an IPv4 header with options and a TCP header with options.
const copyRange = 128

// Config configures a Reader.
type Config struct {
	// NetNS is a file descriptor of the network namespace to read in; 0
	// means the calling thread's.
	NetNS int
	// ReadBuffer is the socket receive buffer in bytes; 0 keeps the
	// kernel's default.
	ReadBuffer int
}

// Stats counts what a Reader could not deliver.
type Stats struct {
	// Overruns is the number of times the socket's receive buffer overflowed
	// (ENOBUFS): the kernel dropped events each time.
	Overruns int
	// Missing is the number of events known lost from gaps in nflog's
	// per-group sequence numbers.
	Missing int
	// Undecodable is the number of TRACE events that could not be decoded.
	Undecodable int
}

// Reader receives the TRACE events of one network namespace. nflog group 0
// has one listener per namespace: a second Reader fails to start there.
type Reader struct {
	nf     *nflog.Nflog
	cancel context.CancelFunc
	// stopped is closed when go-nflog's receiving goroutine stops.
	stopped  chan struct{}
	stopOnce sync.Once

	mu      sync.Mutex
	closed  bool
	stats   Stats
	seq     uint32
	haveSeq bool
	err     error
}

// Open opens a netlink socket to nfnetlink_log.
func Open(cfg Config) (*Reader, error) {
	nf, err := nflog.Open(&nflog.Config{
		NetNS:    cfg.NetNS,
		Group:    Group,
		Copymode: nflog.CopyPacket,
		Bufsize:  copyRange,
		// Send every event at once rather than batching up to a second.
		QThresh: 1,
		// Number the events so that gaps reveal losses.
		Flags: nflog.FlagSeq,
	})
	if err != nil {
		return nil, fmt.Errorf("opening nfnetlink_log socket: %w", err)
	}
	if cfg.ReadBuffer > 0 {
		if err := nlsock.ForceReadBuffer(nf.Con, cfg.ReadBuffer); err != nil {
			nf.Close()
			return nil, err
		}
	}
	return &Reader{nf: nf}, nil
}

// Start binds nflog group 0 and calls handle, from one goroutine, for every
// TRACE event until Close. Messages on group 0 that are not TRACE events,
// from an NFLOG rule of the node, are skipped.
func (r *Reader) Start(handle func(Event)) error {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	// stop tells go-nflog's goroutine to return, and Close that it did.
	stop := func() int {
		r.stopOnce.Do(func() { close(stopped) })
		return 1
	}
	hook := func(a nflog.Attribute) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed {
			return stop()
		}
		r.countSeq(a.Seq)
		ev, err := Decode(a)
		switch {
		case errors.Is(err, ErrNotTrace):
		case err != nil:
			r.stats.Undecodable++
		default:
			handle(ev)
		}
		return 0
	}
	onError := func(err error) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		switch {
		case r.closed:
			return stop()
		case errors.Is(err, unix.ENOBUFS):
			r.stats.Overruns++
			return 0
		}
		r.err = fmt.Errorf("receiving nflog events: %w", err)
		return stop()
	}
	if err := r.nf.RegisterWithErrorFunc(ctx, hook, onError); err != nil {
		cancel()
		return fmt.Errorf("binding nflog group %d: %w", Group, err)
	}
	r.cancel, r.stopped = cancel, stopped
	return nil
}

// countSeq counts the events missing before sequence number seq.
func (r *Reader) countSeq(seq *uint32) {
	if seq == nil {
		return
	}
	if r.haveSeq && *seq != r.seq+1 {
		r.stats.Missing += int(*seq - r.seq - 1)
	}
	r.seq, r.haveSeq = *seq, true
}

// Close stops the Reader. When it returns, handle is not called any more and
// the socket is closed, which frees nflog group 0 for the next Reader. It
// returns what was lost, and the error that stopped reading early, if any.
func (r *Reader) Close() (Stats, error) {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	// Closing the socket ends a pending receive; go-nflog's goroutine then
	// meets closed and stops. Its context is cancelled only after that, so
	// that it never leaves through the context check without saying so.
	cerr := r.nf.Con.Close()
	if r.stopped != nil {
		<-r.stopped
		r.cancel()
	}
	r.nf.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.err
	if cerr != nil && err == nil {
		err = fmt.Errorf("closing nfnetlink_log socket: %w", cerr)
	}
	return r.stats, err
}
