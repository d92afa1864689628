package probe

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/conntrack"
)

// The range probe source ports and echo identifiers come from, and how many
// free-looking ports Plan tries to bind before giving up.
const (
	firstPort   = 40000
	lastPort    = 49999
	bindRetries = 32
)

// reserve picks a random port of the range that no socket or conntrack entry
// uses here or in spec.UniqueIn, binds the probe's socket to it, and fixes
// the flow.
func (p *Probe) reserve(proto trace.Proto) error {
	used, err := portsInUse(proto)
	if err != nil {
		return err
	}
	for _, path := range p.spec.UniqueIn {
		err := ns.WithNetNSPath(path, func(ns.NetNS) error {
			there, err := portsInUse(proto)
			maps.Copy(used, there)
			return err
		})
		if err != nil {
			return fmt.Errorf("checking ports in use in %s: %w", path, err)
		}
	}
	free := candidates(used)
	for _, port := range free[:min(len(free), bindRetries)] {
		bound, err := p.bind(proto, port)
		if err != nil {
			p.Close()
			return err
		}
		if bound {
			p.flow = trace.Flow{Proto: proto, Src: p.spec.Src, SrcPort: port, Dst: p.spec.Dst, DstPort: p.spec.DstPort}
			return nil
		}
	}
	return fmt.Errorf("no free %s source port in %d-%d on %s", proto, firstPort, lastPort, p.spec.Src)
}

// candidates returns the ports of the range that are not used, in random
// order.
func candidates(used map[uint16]bool) []uint16 {
	var free []uint16
	for port := uint16(firstPort); port <= lastPort; port++ {
		if !used[port] {
			free = append(free, port)
		}
	}
	rand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	return free
}

// portsInUse returns the ports of proto that the current netns's sockets
// (as sock_diag lists them: listening, connecting, connected or closing)
// and conntrack entries use. A socket that is only bound is not listed;
// in the current netns, bind itself then refuses a conflicting port.
func portsInUse(proto trace.Proto) (map[uint16]bool, error) {
	used, err := conntrack.PortsInUse(proto)
	if err != nil {
		return nil, err
	}
	var sockets []*netlink.Socket
	switch proto {
	case trace.TCP:
		sockets, err = netlink.SocketDiagTCP(unix.AF_INET)
	case trace.UDP:
		sockets, err = netlink.SocketDiagUDP(unix.AF_INET)
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("listing %s sockets: %w", proto, err)
	}
	for _, s := range sockets {
		used[s.ID.SourcePort] = true
	}
	return used, nil
}

// bind binds the probe's socket to port and reports whether the port was
// free. An ICMP probe's raw socket is opened once; its identifier is not a
// socket port, so any port of the range will do.
func (p *Probe) bind(proto trace.Proto, port uint16) (bool, error) {
	if proto == trace.ICMP {
		c, err := net.ListenPacket("ip4:icmp", p.spec.Src.String())
		if err != nil {
			return false, fmt.Errorf("opening raw ICMP socket on %s: %w", p.spec.Src, err)
		}
		p.icmp = c
		return true, nil
	}
	typ := unix.SOCK_STREAM
	if proto == trace.UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("opening %s socket: %w", proto, err)
	}
	// Queue ICMP errors, so that Send can tell who refused and why.
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVERR, 1); err != nil {
		closeFD(fd)
		return false, fmt.Errorf("setting IP_RECVERR: %w", err)
	}
	err = unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: p.spec.Src.As4()})
	if errors.Is(err, unix.EADDRINUSE) {
		closeFD(fd)
		return false, nil
	}
	if err != nil {
		closeFD(fd)
		return false, fmt.Errorf("binding %s socket to %s:%d: %w", proto, p.spec.Src, port, err)
	}
	p.fd = fd
	return true, nil
}

// closeFD closes a socket that no *os.File owns yet.
func closeFD(fd int) error {
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("closing socket: %w", err)
	}
	return nil
}
