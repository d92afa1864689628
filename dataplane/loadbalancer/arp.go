package loadbalancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// arpResponder answers, on one Ethernet interface, the ARP requests for the
// addresses it announces, with the interface's MAC, through an AF_PACKET
// socket. The kernel does not answer them: the addresses are on no
// interface.
type arpResponder struct {
	iface *net.Interface
	sock  *os.File
	log   *slog.Logger

	mu    sync.Mutex
	addrs map[netip.Addr]bool
}

// listenARP opens the responder on the interface called name in the calling
// thread's network namespace. It announces nothing until announce.
func listenARP(name string, log *slog.Logger) (*arpResponder, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("finding interface %s: %w", name, err)
	}
	if len(iface.HardwareAddr) != 6 {
		return nil, fmt.Errorf("interface %s has no Ethernet address", name)
	}
	// Protocol 0: nothing is received before bind narrows the socket to ARP
	// on this interface.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("creating packet socket: %w", err)
	}
	// The responder's own replies are of no interest.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ignoring outgoing packets: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: iface.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding packet socket to %s: %w", name, err)
	}
	return &arpResponder{
		iface: iface,
		// Non-blocking, the socket joins the runtime's poller: Close
		// interrupts a pending Read.
		sock:  os.NewFile(uintptr(fd), "arp:"+name),
		log:   log,
		addrs: make(map[netip.Addr]bool),
	}, nil
}

// htons converts a 16-bit value to network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// mac is the address the responder answers with.
func (r *arpResponder) mac() net.HardwareAddr { return r.iface.HardwareAddr }

// announce starts answering for addr.
func (r *arpResponder) announce(addr netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs[addr] = true
}

// withdraw stops answering for addr.
func (r *arpResponder) withdraw(addr netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.addrs, addr)
}

// announcing reports whether the responder answers for addr.
func (r *arpResponder) announcing(addr netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addrs[addr]
}

// serve answers requests until close, when it returns nil, or until reading
// fails.
func (r *arpResponder) serve() error {
	buf := make([]byte, 1500)
	for {
		n, err := r.sock.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		if errors.Is(err, unix.ENETDOWN) {
			// Reported once when the link goes down; the socket stays bound
			// and answers again when it comes back.
			r.log.Warn("interface went down", "iface", r.iface.Name)
			continue
		}
		if err != nil {
			return fmt.Errorf("reading ARP on %s: %w", r.iface.Name, err)
		}
		r.handle(buf[:n])
	}
}

// handle answers one received frame if it is a request for an announced
// address. Anything else is ignored. A reply that cannot be sent is logged:
// the requester asks again.
func (r *arpResponder) handle(frame []byte) {
	var eth layers.Ethernet
	var req layers.ARP
	if eth.DecodeFromBytes(frame, gopacket.NilDecodeFeedback) != nil || eth.EthernetType != layers.EthernetTypeARP {
		return
	}
	if req.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback) != nil ||
		req.Operation != layers.ARPRequest || req.AddrType != layers.LinkTypeEthernet ||
		req.Protocol != layers.EthernetTypeIPv4 || req.HwAddressSize != 6 || req.ProtAddressSize != 4 {
		return
	}
	target, _ := netip.AddrFromSlice(req.DstProtAddress)
	if !r.announcing(target) {
		return
	}
	sender, _ := netip.AddrFromSlice(req.SourceProtAddress)
	requester := net.HardwareAddr(req.SourceHwAddress)
	if err := r.reply(eth.SrcMAC, target, requester, sender); err != nil {
		r.log.Warn("answering ARP request failed", "ip", target, "to", sender, "err", err)
		return
	}
	r.log.Debug("answered ARP request", "ip", target, "mac", r.mac().String(), "to", sender, "toMAC", requester.String())
}

// gratuitous broadcasts an unsolicited ARP reply for addr in the form of
// RFC 2002 section 4.6 (sender and target both addr and this interface's
// MAC), so that the neighbours update the entry they may hold for addr at
// once: Linux takes such a reply as gratuitous and overrides the entry even
// within its locktime.
func (r *arpResponder) gratuitous(addr netip.Addr) error {
	broadcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if err := r.reply(broadcast, addr, r.mac(), addr); err != nil {
		return fmt.Errorf("sending gratuitous ARP for %s: %w", addr, err)
	}
	return nil
}

// reply writes an ARP reply from this interface's MAC and senderIP to
// targetMAC and targetIP, in an Ethernet frame to dst.
func (r *arpResponder) reply(dst net.HardwareAddr, senderIP netip.Addr, targetMAC net.HardwareAddr, targetIP netip.Addr) error {
	eth := layers.Ethernet{SrcMAC: r.mac(), DstMAC: dst, EthernetType: layers.EthernetTypeARP}
	arp := layers.ARP{
		AddrType:          layers.LinkTypeEthernet,
		Protocol:          layers.EthernetTypeIPv4,
		HwAddressSize:     6,
		ProtAddressSize:   4,
		Operation:         layers.ARPReply,
		SourceHwAddress:   r.mac(),
		SourceProtAddress: senderIP.AsSlice(),
		DstHwAddress:      targetMAC,
		DstProtAddress:    targetIP.AsSlice(),
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, &eth, &arp); err != nil {
		return fmt.Errorf("encoding ARP: %w", err)
	}
	if _, err := r.sock.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("writing to %s: %w", r.iface.Name, err)
	}
	return nil
}

// close stops serve and releases the socket.
func (r *arpResponder) close() error {
	return r.sock.Close()
}
