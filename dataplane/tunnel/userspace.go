package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"
)

const (
	// maxIPv4Packet is the largest IPv4 packet, and the size of the packet buffers.
	maxIPv4Packet = 65535
	ipv4HeaderLen = 20
	// socketBuffer is the size asked for the raw socket's queues, so that a burst from a fast
	// sender waits in the kernel instead of being dropped.
	socketBuffer = 4 << 20
	// tunQueueLen is how many packets tunl0 holds for the encapsulation loop. A TUN device drops
	// what overflows its queue, 500 packets by default, which a TCP sender fills while the loop
	// waits for a CPU; 1000 is the default queue of an Ethernet device.
	tunQueueLen = 1000
)

// userspaceIPIP serves tunl0 when it is a TUN device: it reads the packets the kernel routes
// into tunl0 and sends each to the node that owns its destination through a raw IPPROTO_IPIP
// socket, which makes the kernel add the outer header node→node, protocol 4; and it strips
// the outer header from the protocol-4 packets that socket receives from known nodes and
// writes the inner packets to tunl0, where the kernel routes them on to the pods. One
// goroutine runs each direction, each with its own reused buffer.
type userspaceIPIP struct {
	h    *netlink.Handle
	tun  *os.File
	link netlink.Link
	sock *net.IPConn
	raw  syscall.RawConn

	peers   atomic.Pointer[peerTable]
	stats   counters
	closing atomic.Bool
	loops   sync.WaitGroup
	// encapErr and decapErr are why a loop stopped before close, read after loops.Wait.
	encapErr, decapErr error
}

func startUserspaceIPIP(h *netlink.Handle, node Node, mtu int) (*userspaceIPIP, error) {
	u := &userspaceIPIP{h: h}
	u.peers.Store(newPeerTable(nil))
	if err := u.open(h, node, mtu); err != nil {
		return nil, errors.Join(err, u.close())
	}
	u.loops.Add(2)
	go func() {
		defer u.loops.Done()
		u.encapErr = u.encapsulate()
	}()
	go func() {
		defer u.loops.Done()
		u.decapErr = u.decapsulate()
	}()
	return u, nil
}

// open makes tunl0 and the raw socket; close undoes whatever part of it was done.
func (u *userspaceIPIP) open(h *netlink.Handle, node Node, mtu int) error {
	var err error
	if u.tun, err = openTUN(ipipName); err != nil {
		return err
	}
	if u.link, err = h.LinkByName(ipipName); err != nil {
		return fmt.Errorf("looking up TUN device %s: %w", ipipName, err)
	}
	// Without a link-local address, tunl0 is not sent IPv6 router solicitations and MLD reports.
	if err := h.LinkSetIP6AddrGenMode(u.link, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return fmt.Errorf("turning off IPv6 addresses on %s: %w", ipipName, err)
	}
	if err := h.LinkSetTxQLen(u.link, tunQueueLen); err != nil {
		return fmt.Errorf("setting the queue of %s to %d packets: %w", ipipName, tunQueueLen, err)
	}
	if err := setUpTunnelLink(h, u.link, node.TunnelAddr, mtu); err != nil {
		return err
	}

	if u.sock, err = net.ListenIP("ip4:4", &net.IPAddr{IP: node.IP.AsSlice()}); err != nil {
		return fmt.Errorf("opening raw IPIP socket on %s: %w", node.IP, err)
	}
	if u.raw, err = u.sock.SyscallConn(); err != nil {
		return fmt.Errorf("reaching the raw IPIP socket: %w", err)
	}
	return setSocketBuffers(u.raw, socketBuffer)
}

// openTUN creates a TUN device that carries bare IPv4 packets (IFF_TUN|IFF_NO_PI). The device
// lives as long as the returned file stays open; the file is non-blocking, so its reads wait in
// the Go poller and Close interrupts them.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("naming TUN device %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// setSocketBuffers sizes both queues of a socket, past the sysctl limits when allowed.
func setSocketBuffers(raw syscall.RawConn, size int) error {
	var err error
	ctrlErr := raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], size) == nil {
				continue
			}
			if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], size); err != nil {
				return
			}
		}
	})
	if err = errors.Join(ctrlErr, err); err != nil {
		return fmt.Errorf("sizing raw IPIP socket buffers: %w", err)
	}
	return nil
}

func (u *userspaceIPIP) route(b Block) *netlink.Route {
	return gatewayRoute(b.CIDR, b.NodeIP, u.link.Attrs().Index, true)
}

// addPeers swaps in the table of remote blocks, which also drops the nodes no longer listed.
func (u *userspaceIPIP) addPeers(remote []Block) error {
	u.peers.Store(newPeerTable(remote))
	return nil
}

func (u *userspaceIPIP) removeStalePeers([]Block) error { return nil }

// encapsulate moves packets from tunl0 to the raw socket until the TUN device is closed.
func (u *userspaceIPIP) encapsulate() error {
	c := &u.stats.encap
	buf := make([]byte, maxIPv4Packet)
	ttl := newTTLMessage()
	var (
		pkt     []byte
		to      *unix.SockaddrInet4
		sendErr error
	)
	send := func(fd uintptr) bool {
		for {
			sendErr = unix.Sendmsg(int(fd), pkt, ttl, to, 0)
			if sendErr != unix.EINTR {
				return sendErr != unix.EAGAIN
			}
		}
	}
	for {
		n, err := u.tun.Read(buf)
		if err != nil {
			return u.stopped("reading from "+ipipName, err)
		}
		pkt = buf[:n]
		if n < ipv4HeaderLen || pkt[0]>>4 != 4 || pkt[8] == 0 {
			c.malformed.Add(1)
			continue
		}
		var ok bool
		if to, ok = u.peers.Load().owner([4]byte(pkt[16:20])); !ok {
			c.noPeer.Add(1)
			continue
		}
		ttl.set(pkt[8])
		if err := u.raw.Write(send); err != nil {
			return u.stopped("sending IPIP packets", err)
		}
		if sendErr != nil {
			c.socketErrors.Add(1)
			continue
		}
		c.packets.Add(1)
	}
}

// decapsulate moves packets from the raw socket to tunl0 until the socket is closed.
func (u *userspaceIPIP) decapsulate() error {
	c := &u.stats.decap
	buf := make([]byte, maxIPv4Packet)
	var (
		n       int
		recvErr error
	)
	recv := func(fd uintptr) bool {
		for {
			n, recvErr = unix.Read(int(fd), buf)
			if recvErr != unix.EINTR {
				return recvErr != unix.EAGAIN
			}
		}
	}
	for {
		if err := u.raw.Read(recv); err != nil {
			return u.stopped("receiving IPIP packets", err)
		}
		if recvErr != nil {
			c.socketErrors.Add(1)
			continue
		}
		inner, verdict := u.peers.Load().decapsulate(buf[:n])
		switch verdict {
		case dropUnknownSource:
			c.unknownSource.Add(1)
			continue
		case dropMalformed:
			c.malformed.Add(1)
			continue
		}
		if _, err := u.tun.Write(inner); err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD) {
				return u.stopped("writing to "+ipipName, err)
			}
			c.writeErrors.Add(1)
			continue
		}
		c.packets.Add(1)
	}
}

// stopped is the error a loop ends with: none when close stopped it.
func (u *userspaceIPIP) stopped(doing string, err error) error {
	if u.closing.Load() {
		return nil
	}
	return fmt.Errorf("userspace IPIP stopped %s: %w", doing, err)
}

// close stops both loops and removes tunl0, and with it the routes through it. Closing the TUN
// device would remove it too, but only once no process holds the file, and a child forked at
// that moment holds it until it execs; so tunl0 is deleted first.
func (u *userspaceIPIP) close() error {
	u.closing.Store(true)
	var errs []error
	if u.link != nil {
		if err := u.h.LinkDel(u.link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("deleting TUN device %s: %w", ipipName, err))
		}
	}
	if u.sock != nil {
		if err := u.sock.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the raw IPIP socket: %w", err))
		}
	}
	if u.tun != nil {
		if err := u.tun.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing TUN device %s: %w", ipipName, err))
		}
	}
	u.loops.Wait()
	return errors.Join(append(errs, u.encapErr, u.decapErr)...)
}

// ttlMessage is an IP_TTL control message: it gives the outer header the inner packet's TTL,
// as the kernel's tunl0 ("ttl inherit") does.
type ttlMessage []byte

func newTTLMessage() ttlMessage {
	m := make(ttlMessage, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&m[0]))
	h.Level = unix.IPPROTO_IP
	h.Type = unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	return m
}

func (m ttlMessage) set(ttl byte) {
	binary.NativeEndian.PutUint32(m[unix.CmsgLen(0):], uint32(ttl))
}

// peerTable tells the encapsulation path which node owns a destination, and the
// decapsulation path which outer sources are nodes. It is never changed once published.
type peerTable struct {
	// prefixLens are the distinct prefix lengths of the blocks, longest first.
	prefixLens []int
	owners     map[uint64]*unix.SockaddrInet4
	nodes      map[[4]byte]bool
}

func newPeerTable(remote []Block) *peerTable {
	t := &peerTable{
		owners: make(map[uint64]*unix.SockaddrInet4, len(remote)),
		nodes:  make(map[[4]byte]bool),
	}
	byNode := make(map[[4]byte]*unix.SockaddrInet4)
	for _, b := range remote {
		nodeIP := b.NodeIP.As4()
		to, ok := byNode[nodeIP]
		if !ok {
			to = &unix.SockaddrInet4{Addr: nodeIP}
			byNode[nodeIP] = to
		}
		t.owners[blockKey(b.CIDR.Addr().As4(), b.CIDR.Bits())] = to
		t.nodes[nodeIP] = true
		if !slices.Contains(t.prefixLens, b.CIDR.Bits()) {
			t.prefixLens = append(t.prefixLens, b.CIDR.Bits())
		}
	}
	slices.SortFunc(t.prefixLens, func(a, b int) int { return b - a })
	return t
}

// blockKey is the key of the block of length bits that holds addr.
func blockKey(addr [4]byte, bits int) uint64 {
	a := binary.BigEndian.Uint32(addr[:])
	if bits < 32 {
		a &^= ^uint32(0) >> bits
	}
	return uint64(bits)<<32 | uint64(a)
}

// owner is the address of the node whose block holds dst, by longest prefix.
func (t *peerTable) owner(dst [4]byte) (*unix.SockaddrInet4, bool) {
	for _, bits := range t.prefixLens {
		if to, ok := t.owners[blockKey(dst, bits)]; ok {
			return to, true
		}
	}
	return nil, false
}

// verdict is what the decapsulation path does with a received packet.
type verdict int

const (
	deliver verdict = iota
	dropMalformed
	dropUnknownSource
)

// decapsulate checks an IPIP packet received from the underlay (outer header included, as raw
// sockets receive it) and returns the inner packet.
func (t *peerTable) decapsulate(outer []byte) ([]byte, verdict) {
	if len(outer) < ipv4HeaderLen || outer[0]>>4 != 4 {
		return nil, dropMalformed
	}
	headerLen := int(outer[0]&0x0f) * 4
	if headerLen < ipv4HeaderLen || len(outer) < headerLen+ipv4HeaderLen {
		return nil, dropMalformed
	}
	if !t.nodes[[4]byte(outer[12:16])] {
		return nil, dropUnknownSource
	}
	inner := outer[headerLen:]
	total := int(binary.BigEndian.Uint16(inner[2:4]))
	if inner[0]>>4 != 4 || total < ipv4HeaderLen || total > len(inner) {
		return nil, dropMalformed
	}
	return inner[:total], deliver
}

// Stats counts what the userspace IPIP path did with packets.
type Stats struct {
	// Encapsulated counts packets sent from tunl0 to another node.
	Encapsulated uint64
	// Decapsulated counts packets received from another node and written to tunl0.
	Decapsulated uint64
	// NoPeer counts packets in tunl0 whose destination is in no block of another node.
	NoPeer uint64
	// UnknownSource counts IPIP packets whose outer source is not a node.
	UnknownSource uint64
	// Malformed counts packets, in either direction, that are not whole IPv4 packets.
	Malformed uint64
	// SocketErrors counts sends and receives the raw socket failed, such as ICMP errors from
	// the underlay reported on it.
	SocketErrors uint64
	// WriteErrors counts inner packets tunl0 refused.
	WriteErrors uint64
}

// counters are the live Stats, one cache line per direction so the two loops do not contend.
type counters struct {
	_     cpu.CacheLinePad
	encap struct {
		packets, noPeer, malformed, socketErrors atomic.Uint64
		_                                        cpu.CacheLinePad
	}
	decap struct {
		packets, unknownSource, malformed, socketErrors, writeErrors atomic.Uint64
		_                                                            cpu.CacheLinePad
	}
}

func (c *counters) snapshot() Stats {
	return Stats{
		Encapsulated:  c.encap.packets.Load(),
		Decapsulated:  c.decap.packets.Load(),
		NoPeer:        c.encap.noPeer.Load(),
		UnknownSource: c.decap.unknownSource.Load(),
		Malformed:     c.encap.malformed.Load() + c.decap.malformed.Load(),
		SocketErrors:  c.encap.socketErrors.Load() + c.decap.socketErrors.Load(),
		WriteErrors:   c.decap.writeErrors.Load(),
	}
}
