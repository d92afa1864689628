// Package capture watches the traced flow on one interface with an AF_PACKET
// socket and a TPACKET_V3 ring. A BPF filter assembled from the trace.Match
// (package capture/filter) runs in the kernel, so a busy interface copies
// only the flow's packets, ARP, tunnelled copies of the flow and, when
// asked, DNS to userspace, and only their headers unless FullPayload is
// set. Each packet is decoded into a trace.Hop (package capture/decode) and
// kept raw for the pcapng file (package capture/pcapng). A Capture is a
// trace.Widener: its filter is replaced, atomically, when its match grows.
package capture

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/capture/decode"
	"github.com/kubectl-nettrace/nettrace/capture/filter"
	"github.com/kubectl-nettrace/nettrace/capture/pcapng"
	"github.com/kubectl-nettrace/nettrace/trace"
)

// Defaults for the zero values of Config.
const (
	// DefaultSnaplen keeps all headers of TCP in IPv4 in VXLAN, with up to
	// 24 bytes of TCP options.
	DefaultSnaplen = 128
	// DefaultRingSize is the kernel ring's size in bytes.
	DefaultRingSize = 4 << 20
	// DefaultMaxPackets bounds the raw packets kept for the pcapng file.
	DefaultMaxPackets = 100_000
)

// arenaChunk is the size of the buffers kept packets are copied into.
const arenaChunk = 1 << 20

// Config says what a capture watches and how its hops are labelled.
type Config struct {
	// Iface is the interface to capture on, in the current network namespace.
	Iface string
	// Node and Netns label the hops; Netns may be empty for the node's own.
	Node  string
	Netns string
	// Match selects the traced flow.
	Match trace.Match
	// DNS also captures DNS (UDP port 53) packets, whole.
	DNS bool
	// Snaplen is the number of bytes kept of each packet, DefaultSnaplen
	// when zero. FullPayload keeps packets whole instead.
	Snaplen     int
	FullPayload bool
	// RingSize is the kernel ring's size in bytes, DefaultRingSize when zero.
	RingSize int
	// MaxPackets bounds the raw packets kept for Packets, DefaultMaxPackets
	// when zero. Hops are emitted for every packet either way.
	MaxPackets int
	// Inbound captures only what the interface receives
	// (PACKET_IGNORE_OUTGOING). The kernel clones every packet an interface
	// sends for its packet sockets before their filters run, so a capture
	// of both directions slows the interface's other traffic; an inbound
	// one only runs its filter. On one end of a veth pair it misses
	// nothing if the other end is captured inbound too: what one end sends,
	// the other receives.
	Inbound bool

	// retire is how long the kernel keeps a block that holds packets
	// before handing it over, retireTimeout when zero; tests lengthen it.
	retire time.Duration
}

// Stats counts what a capture saw.
type Stats struct {
	// Received is the packets the filter passed to userspace.
	Received int
	// Dropped is the packets the filter passed but the ring had no room for.
	Dropped int
	// Undecoded is the packets received that did not decode into a hop.
	Undecoded int
	// NotKept is the packets received beyond MaxPackets, missing from Packets.
	NotKept int
}

// Capture is a packet capture on one interface. Open it in the network
// namespace of the interface; the socket stays bound there.
type Capture struct {
	cfg     Config
	link    layers.LinkType
	snaplen uint32
	sock    int
	wake    int // eventfd that tells the reader to stop
	ring    *ring

	// mu guards armed, closed and cfg.Match, and the descriptors against
	// use while they are being closed.
	mu        sync.Mutex
	armed     bool
	closed    bool
	done      chan struct{} // closed when the reader returns
	closeOnce sync.Once
	closeErr  error
	loss      []trace.Loss

	// Written by the reader; read after done is closed.
	kept    []kept
	arena   []byte
	stats   Stats
	readErr error
	// sockErr is the last error the socket reported, such as ENETDOWN
	// when the interface went down during the capture.
	sockErr error
}

// kept is a raw packet; Packets decodes it again for its annotation, so
// that the hot path stores only bytes.
type kept struct {
	time     time.Time
	data     []byte
	length   int
	outgoing bool
}

// Open opens a capture on cfg.Iface in the calling thread's network
// namespace: the caller that entered a namespace must have locked its OS
// thread. Packets are queued in the kernel ring from now on and handed to
// emit once the capture is armed.
func Open(cfg Config) (*Capture, error) {
	if cfg.Snaplen == 0 {
		cfg.Snaplen = DefaultSnaplen
	}
	if cfg.RingSize == 0 {
		cfg.RingSize = DefaultRingSize
	}
	if cfg.MaxPackets == 0 {
		cfg.MaxPackets = DefaultMaxPackets
	}
	if cfg.Snaplen < 0 || cfg.RingSize < 0 || cfg.MaxPackets < 0 {
		return nil, fmt.Errorf("opening capture on %s: negative snaplen, ring size or packet limit", cfg.Iface)
	}
	c := &Capture{cfg: cfg, snaplen: uint32(cfg.Snaplen), sock: -1, wake: -1, done: make(chan struct{})}
	if cfg.FullPayload {
		c.snaplen = filter.Whole
	}
	if err := c.open(); err != nil {
		c.release()
		return nil, fmt.Errorf("opening capture on %s: %w", cfg.Iface, err)
	}
	return c, nil
}

func (c *Capture) open() error {
	var err error
	// Protocol 0: nothing is received before bind, so no packet passes
	// unfiltered.
	if c.sock, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("creating packet socket: %w", err)
	}
	index, hwType, err := interfaceInfo(c.sock, c.cfg.Iface)
	if err != nil {
		return err
	}
	if c.link, err = linkType(hwType); err != nil {
		return err
	}
	if err := c.attachFilter(); err != nil {
		return err
	}
	if c.cfg.Inbound {
		if err := unix.SetsockoptInt(c.sock, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fmt.Errorf("ignoring outgoing packets: %w", err)
		}
	}
	if c.ring, err = mapRing(c.sock, c.cfg.RingSize, c.cfg.FullPayload, cmp.Or(c.cfg.retire, retireTimeout)); err != nil {
		return err
	}
	if c.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("creating eventfd: %w", err)
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: index}
	if err := unix.Bind(c.sock, sa); err != nil {
		return fmt.Errorf("binding to interface %d: %w", index, err)
	}
	return nil
}

// interfaceInfo returns the index and ARPHRD hardware type of an interface.
func interfaceInfo(sock int, name string) (int, uint16, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, 0, fmt.Errorf("interface name %q: %w", name, err)
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, 0, fmt.Errorf("looking up interface %s: %w", name, err)
	}
	index := int(ifr.Uint32())
	// SIOCGIFHWADDR returns a sockaddr whose family is the hardware type.
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFHWADDR, ifr); err != nil {
		return 0, 0, fmt.Errorf("reading hardware type of %s: %w", name, err)
	}
	return index, ifr.Uint16(), nil
}

// linkType maps an ARPHRD type to the framing of the captured packets.
func linkType(hwType uint16) (layers.LinkType, error) {
	switch hwType {
	case unix.ARPHRD_ETHER, unix.ARPHRD_LOOPBACK:
		return layers.LinkTypeEthernet, nil
	case unix.ARPHRD_NONE, unix.ARPHRD_TUNNEL, unix.ARPHRD_RAWIP:
		// TUN devices and ipip tunnels: packets start at the IP header.
		return layers.LinkTypeRaw, nil
	}
	return 0, fmt.Errorf("unsupported hardware type %d", hwType)
}

var _ trace.Widener = (*Capture)(nil)

// attachFilter attaches the filter of the capture's match to the socket.
// SO_ATTACH_FILTER replaces a filter already attached in one step: no
// packet meets the socket without one of them.
func (c *Capture) attachFilter() error {
	raw, err := filter.Assemble(c.link, filter.Options{Match: c.cfg.Match, DNS: c.cfg.DNS, Snaplen: c.snaplen})
	if err != nil {
		return err
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(c.sock, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attaching filter: %w", err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Widen replaces the capture's filter with one for m, which selects what
// the capture selects and more. The packets already queued in the ring stay
// there.
func (c *Capture) Widen(m trace.Match) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.sock < 0 {
		return fmt.Errorf("widening the capture on %s: closed", c.cfg.Iface)
	}
	previous := c.cfg.Match
	c.cfg.Match = m
	if err := c.attachFilter(); err != nil {
		c.cfg.Match = previous
		return fmt.Errorf("widening the capture on %s: %w", c.cfg.Iface, err)
	}
	return nil
}

// Interface describes the capture for a pcapng Interface Description Block:
// named "node/interface", with the netns as its description.
func (c *Capture) Interface() pcapng.Interface {
	i := pcapng.Interface{Name: c.cfg.Node + "/" + c.cfg.Iface, LinkType: c.link, Snaplen: c.snaplen}
	if c.cfg.Netns != "" {
		i.Description = "netns " + c.cfg.Netns
	}
	return i
}

// Arm starts handing packets to emit, from its own goroutine, until Close
// or until ctx is done.
func (c *Capture) Arm(ctx context.Context, emit func(trace.Hop)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.armed || c.closed {
		return fmt.Errorf("capture on %s: already armed or closed", c.cfg.Iface)
	}
	c.armed = true
	go c.read(emit)
	go func() {
		select {
		case <-ctx.Done():
			c.stop()
		case <-c.done:
		}
	}()
	return nil
}

// stop tells the reader to drain the ring and return.
func (c *Capture) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.wake < 0 {
		return // closed already
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(c.wake, one[:]) // an open eventfd only refuses a write at its maximum, which still wakes
}

// read consumes the ring until told to stop; then it drains it: it waits
// stopGrace for packets on their way, and as long as the kernel holds
// packets in a block not handed over yet, up to stopLimit.
func (c *Capture) read(emit func(trace.Hop)) {
	defer close(c.done)
	var d decode.Decoder
	handle := func(f frame) { c.handle(&d, f, emit) }
	var stopped time.Time
	for {
		if c.ring.ready() {
			c.ring.consume(handle)
			continue
		}
		if !stopped.IsZero() {
			until := stopGrace
			if c.ring.filling() {
				until = stopLimit
			}
			left := until - time.Since(stopped)
			if left <= 0 {
				return
			}
			last := []unix.PollFd{{Fd: int32(c.sock), Events: unix.POLLIN}}
			unix.Poll(last, int(left/time.Millisecond)+1) // a timeout is the answer too
			if last[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
				return // nothing more will come
			}
			continue
		}
		fds := []unix.PollFd{
			{Fd: int32(c.sock), Events: unix.POLLIN | unix.POLLERR},
			{Fd: int32(c.wake), Events: unix.POLLIN},
		}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			c.readErr = fmt.Errorf("waiting for packets on %s: %w", c.cfg.Iface, err)
			return
		}
		if fds[0].Revents&unix.POLLERR != 0 {
			// A pending socket error (the interface went down, or away)
			// keeps poll returning until it is read: read it, so that the
			// loop waits again instead of spinning.
			if errno, err := unix.GetsockoptInt(c.sock, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && errno != 0 {
				c.sockErr = unix.Errno(errno)
			}
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLNVAL) != 0 {
			return
		}
		if fds[1].Revents != 0 {
			stopped = time.Now()
		}
	}
}

// handle decodes one packet, emits its hop and keeps it raw.
func (c *Capture) handle(d *decode.Decoder, f frame, emit func(trace.Hop)) {
	c.stats.Received++
	hop, err := d.Decode(f.data, c.link)
	if err != nil {
		c.stats.Undecoded++
	} else {
		hop.Time, hop.Node, hop.Netns, hop.Iface = f.time, c.cfg.Node, c.cfg.Netns, c.cfg.Iface
		hop.Way = trace.WayIn
		if f.outgoing {
			hop.Way = trace.WayOut
		}
		emit(hop)
	}
	if len(c.kept) >= c.cfg.MaxPackets {
		c.stats.NotKept++
		return
	}
	if len(c.arena)+len(f.data) > cap(c.arena) {
		c.arena = make([]byte, 0, max(arenaChunk, len(f.data)))
	}
	start := len(c.arena)
	c.arena = append(c.arena, f.data...)
	c.kept = append(c.kept, kept{
		time: f.time, data: c.arena[start:len(c.arena):len(c.arena)], length: f.length, outgoing: f.outgoing,
	})
}

// Close stops the capture, closes the socket and reports the packets the
// kernel dropped because the ring was full. It is safe to call more than
// once; later calls return what the first did.
func (c *Capture) Close() ([]trace.Loss, error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		armed := c.armed
		c.closed = true
		c.mu.Unlock()
		if armed {
			c.stop()
			<-c.done
		} else {
			close(c.done)
		}
		c.closeErr = c.readErr
		stats, err := unix.GetsockoptTpacketStatsV3(c.sock, unix.SOL_PACKET, unix.PACKET_STATISTICS)
		if err != nil && c.closeErr == nil {
			c.closeErr = fmt.Errorf("reading drop count of %s: %w", c.cfg.Iface, err)
		} else if stats.Drops > 0 {
			c.stats.Dropped = int(stats.Drops)
			c.loss = []trace.Loss{{
				Node: c.cfg.Node, Source: decode.Source, Count: int(stats.Drops),
				Detail: fmt.Sprintf("%s: %d packets dropped by the kernel, capture ring full", c.cfg.Iface, stats.Drops),
			}}
		}
		if c.sockErr != nil {
			c.loss = append(c.loss, trace.Loss{
				Node: c.cfg.Node, Source: decode.Source,
				Detail: fmt.Sprintf("%s: the capture socket reported %v; packets may be missing", c.cfg.Iface, c.sockErr),
			})
		}
		c.mu.Lock()
		if err := c.release(); err != nil && c.closeErr == nil {
			c.closeErr = err
		}
		c.mu.Unlock()
	})
	return c.loss, c.closeErr
}

// release closes the socket, the eventfd and the ring, whichever are open.
func (c *Capture) release() error {
	var errs []error
	if c.ring != nil {
		errs = append(errs, c.ring.unmap())
		c.ring = nil
	}
	for _, fd := range []*int{&c.sock, &c.wake} {
		if *fd >= 0 {
			if err := unix.Close(*fd); err != nil {
				errs = append(errs, fmt.Errorf("closing capture of %s: %w", c.cfg.Iface, err))
			}
			*fd = -1
		}
	}
	return errors.Join(errs...)
}

// Stats returns the capture's counters. It waits for Close.
func (c *Capture) Stats() Stats {
	<-c.done
	return c.stats
}

// Packets returns the kept raw packets, annotated with their hops, for a
// pcapng file in which the capture's Interface has index iface. It waits
// for Close.
func (c *Capture) Packets(iface int) []pcapng.Packet {
	<-c.done
	var d decode.Decoder
	out := make([]pcapng.Packet, len(c.kept))
	for i, k := range c.kept {
		p := pcapng.Packet{Interface: iface, Time: k.time, Data: k.data, Length: k.length, Direction: pcapng.Inbound}
		if k.outgoing {
			p.Direction = pcapng.Outbound
		}
		if hop, err := d.Decode(k.data, c.link); err != nil {
			p.Comment = "undecoded: " + err.Error()
		} else {
			p.Comment = decode.Summary(hop)
		}
		out[i] = p
	}
	return out
}
