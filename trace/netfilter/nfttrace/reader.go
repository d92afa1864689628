package nfttrace

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace/netfilter/internal/nlsock"
)

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
	// (ENOBUFS): the kernel dropped at least one event each time.
	Overruns int
	// Undecodable is the number of trace messages that could not be decoded.
	Undecodable int
}

// Reader receives the nf_tables trace events of one network namespace.
type Reader struct {
	conn   *netlink.Conn
	closed atomic.Bool
	// done is closed when the goroutine that Start began has returned.
	done chan struct{}

	mu    sync.Mutex
	stats Stats
	err   error
}

// Open opens a netlink socket and joins the NFNLGRP_NFTRACE group. Events
// queue in the socket from then on; Start delivers them.
func Open(cfg Config) (*Reader, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, fmt.Errorf("opening netfilter netlink socket: %w", err)
	}
	if cfg.ReadBuffer > 0 {
		if err := nlsock.ForceReadBuffer(conn, cfg.ReadBuffer); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		conn.Close()
		return nil, fmt.Errorf("joining the nftrace multicast group: %w", err)
	}
	return &Reader{conn: conn}, nil
}

// Start calls handle, from one goroutine, for every trace event until Close.
func (r *Reader) Start(handle func(Event)) {
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		for {
			msgs, err := r.conn.Receive()
			if err != nil {
				if r.closed.Load() {
					return
				}
				r.mu.Lock()
				if errors.Is(err, unix.ENOBUFS) {
					r.stats.Overruns++
					r.mu.Unlock()
					continue
				}
				r.err = fmt.Errorf("receiving nftrace events: %w", err)
				r.mu.Unlock()
				return
			}
			for _, m := range msgs {
				ev, err := Decode(m)
				switch {
				case errors.Is(err, ErrNotTrace):
				case err != nil:
					r.mu.Lock()
					r.stats.Undecodable++
					r.mu.Unlock()
				default:
					handle(ev)
				}
			}
		}
	}()
}

// Close stops the Reader and waits until handle has returned for the last
// time. It returns what was lost, and the error that stopped reading early,
// if any. A Reader that was never started is closed too.
func (r *Reader) Close() (Stats, error) {
	r.closed.Store(true)
	cerr := r.conn.Close()
	if r.done != nil {
		<-r.done
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.err
	if cerr != nil && err == nil {
		err = fmt.Errorf("closing nftrace socket: %w", cerr)
	}
	return r.stats, err
}
