// Package decode turns captured packets into trace hops: ARP requests and
// replies, IPv4 packets with their TCP, UDP or ICMP header, the same inside
// IPIP or VXLAN (the tunnel's outer header in Packet.Outer), and DNS
// messages. It decodes with gopacket's layers into reused structures, so a
// capture can decode every packet the kernel passes up without allocating
// per layer. Truncated packets (headers-only captures) decode as far as
// their bytes go.
package decode

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Source is the trace.Hop source name of captured packets.
const Source = "capture"

// ProxyARPMAC is the MAC address Calico gives the host side of every pod
// veth. That interface owns no IP address, so every ARP reply it sends (for
// 169.254.1.1, the pods' default gateway) is a proxy reply.
var ProxyARPMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// NoteProxyARP is the Note of a proxy ARP reply.
const NoteProxyARP = "proxy ARP"

// vxlanPort is the IANA UDP port of VXLAN.
const vxlanPort = 4789

// dnsPort is the UDP port of DNS.
const dnsPort = 53

// arpLength is the length of an Ethernet/IPv4 ARP message.
const arpLength = 28

// ErrUnsupported is returned for packets that are neither ARP nor IPv4.
var ErrUnsupported = errors.New("unsupported packet")

// A Decoder decodes packets one at a time, reusing its layers. It is not
// safe for concurrent use.
type Decoder struct {
	eth   layers.Ethernet
	arp   layers.ARP
	ip    layers.IPv4
	tcp   layers.TCP
	udp   layers.UDP
	icmp  layers.ICMPv4
	vxlan layers.VXLAN
	dns   layers.DNS
}

// Decode decodes one packet of a capture whose link type is
// layers.LinkTypeEthernet or layers.LinkTypeRaw into a hop of kind
// HopInterface, HopARP or HopDNS. It sets Kind, Source, Packet, ARP, DNS
// and Note; the caller labels the hop with its time, node, netns and
// interface.
//
// Decode never panics: should a layer's decoder do so on a malformed
// packet, the panic becomes an error, as in gopacket.NewPacket.
func (d *Decoder) Decode(data []byte, link layers.LinkType) (h trace.Hop, err error) {
	defer func() {
		if r := recover(); r != nil {
			h, err = trace.Hop{Source: Source}, fmt.Errorf("malformed packet: %v", r)
		}
	}()
	return d.decode(data, link)
}

// decode is Decode without the recovery, for the fuzz test to find panics.
func (d *Decoder) decode(data []byte, link layers.LinkType) (trace.Hop, error) {
	h := trace.Hop{Source: Source}
	var err error
	switch link {
	case layers.LinkTypeEthernet:
		err = d.ethernet(&h, data, nil)
	case layers.LinkTypeRaw:
		err = d.ipv4(&h, data, nil)
	default:
		err = fmt.Errorf("%w: link type %s", ErrUnsupported, link)
	}
	return h, err
}

// ethernet decodes an Ethernet frame: outer is set when the frame came out
// of a VXLAN tunnel.
func (d *Decoder) ethernet(h *trace.Hop, data []byte, outer *trace.Tunnel) error {
	if err := d.eth.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("decoding ethernet: %w", err)
	}
	switch d.eth.EthernetType {
	case layers.EthernetTypeARP:
		if outer != nil {
			return fmt.Errorf("%w: ARP inside %s", ErrUnsupported, outer.Type)
		}
		return d.arpPacket(h, d.eth.Payload)
	case layers.EthernetTypeIPv4:
		return d.ipv4(h, d.eth.Payload, outer)
	}
	return fmt.Errorf("%w: ethertype %s", ErrUnsupported, d.eth.EthernetType)
}

func (d *Decoder) arpPacket(h *trace.Hop, data []byte) error {
	// Only Ethernet/IPv4 ARP is decoded. Checking the address sizes first
	// also keeps gopacket v1.1.19 from computing the message length in a
	// byte, which overflows and makes it read past the data.
	if len(data) < arpLength || data[4] != 6 || data[5] != 4 {
		return fmt.Errorf("%w: ARP of %d bytes that is not Ethernet/IPv4", ErrUnsupported, len(data))
	}
	if err := d.arp.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("decoding arp: %w", err)
	}
	a := &d.arp
	if a.AddrType != layers.LinkTypeEthernet || a.Protocol != layers.EthernetTypeIPv4 {
		return fmt.Errorf("%w: ARP for hardware %s protocol %s", ErrUnsupported, a.AddrType, a.Protocol)
	}
	arp := &trace.ARP{
		SenderIP:  addr(a.SourceProtAddress),
		SenderMAC: net.HardwareAddr(a.SourceHwAddress).String(),
		TargetIP:  addr(a.DstProtAddress),
	}
	switch a.Operation {
	case layers.ARPRequest:
		arp.Op = "request"
	case layers.ARPReply:
		arp.Op = "reply"
		arp.TargetMAC = net.HardwareAddr(a.DstHwAddress).String()
		if arp.SenderMAC == ProxyARPMAC.String() {
			arp.Proxy = true
			h.Note = NoteProxyARP
		}
	default:
		return fmt.Errorf("%w: ARP operation %d", ErrUnsupported, a.Operation)
	}
	h.Kind, h.ARP = trace.HopARP, arp
	return nil
}

// ipv4 decodes an IPv4 packet and what it carries: outer is set when the
// packet came out of a tunnel, which then cannot hold another one.
func (d *Decoder) ipv4(h *trace.Hop, data []byte, outer *trace.Tunnel) error {
	if len(data) > 0 && data[0]>>4 != 4 {
		return fmt.Errorf("%w: IP version %d", ErrUnsupported, data[0]>>4)
	}
	if err := d.ip.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("decoding ipv4: %w", err)
	}
	p := &trace.Packet{
		Src:    addr(d.ip.SrcIP),
		Dst:    addr(d.ip.DstIP),
		Length: int(d.ip.Length),
		TTL:    d.ip.TTL,
		Outer:  outer,
	}
	h.Kind, h.Packet = trace.HopInterface, p
	payload := d.ip.Payload
	if d.ip.FragOffset != 0 {
		h.Note = "IP fragment"
		return nil
	}
	switch d.ip.Protocol {
	case layers.IPProtocolIPv4:
		if outer == nil {
			return d.ipv4(h, payload, &trace.Tunnel{Type: "ipip", Src: p.Src, Dst: p.Dst})
		}
	case layers.IPProtocolTCP:
		return d.tcpSegment(p, payload)
	case layers.IPProtocolUDP:
		return d.udpDatagram(h, p, payload)
	case layers.IPProtocolICMPv4:
		return d.icmpMessage(h, p, payload)
	}
	h.Note = "IP protocol " + d.ip.Protocol.String()
	return nil
}

func (d *Decoder) tcpSegment(p *trace.Packet, data []byte) error {
	p.Proto = trace.TCP
	// A headers-only capture may cut TCP options short; the fixed header
	// is all a hop needs, so only a segment shorter than it fails.
	if err := d.tcp.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil && len(data) < 20 {
		return fmt.Errorf("decoding tcp: %w", err)
	}
	p.SrcPort, p.DstPort = uint16(d.tcp.SrcPort), uint16(d.tcp.DstPort)
	p.TCPFlags = tcpFlags(&d.tcp)
	return nil
}

// tcpFlags formats the flags as tcpdump does: "S", "S.", "P.", "F.", "R".
func tcpFlags(t *layers.TCP) string {
	var b strings.Builder
	for _, f := range []struct {
		set  bool
		name byte
	}{{t.FIN, 'F'}, {t.SYN, 'S'}, {t.RST, 'R'}, {t.PSH, 'P'}, {t.ACK, '.'}, {t.URG, 'U'}, {t.ECE, 'E'}, {t.CWR, 'W'}} {
		if f.set {
			b.WriteByte(f.name)
		}
	}
	return b.String()
}

func (d *Decoder) udpDatagram(h *trace.Hop, p *trace.Packet, data []byte) error {
	p.Proto = trace.UDP
	if err := d.udp.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("decoding udp: %w", err)
	}
	p.SrcPort, p.DstPort = uint16(d.udp.SrcPort), uint16(d.udp.DstPort)
	payload := d.udp.Payload
	switch {
	case p.DstPort == vxlanPort && p.Outer == nil:
		return d.vxlanFrame(h, p, payload)
	case p.SrcPort == dnsPort || p.DstPort == dnsPort:
		d.dnsMessage(h, payload)
	}
	return nil
}

func (d *Decoder) vxlanFrame(h *trace.Hop, outer *trace.Packet, data []byte) error {
	if err := d.vxlan.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("decoding vxlan: %w", err)
	}
	tunnel := &trace.Tunnel{Type: "vxlan", Src: outer.Src, Dst: outer.Dst, VNI: d.vxlan.VNI}
	return d.ethernet(h, d.vxlan.Payload, tunnel)
}

// dnsMessage turns h into a DNS hop when data is a DNS message; anything
// else on port 53 stays an interface hop with a note.
func (d *Decoder) dnsMessage(h *trace.Hop, data []byte) {
	if err := d.decodeDNS(data); err != nil {
		h.Note = "undecodable DNS: " + err.Error()
		return
	}
	m := &trace.DNS{ID: d.dns.ID, Response: d.dns.QR}
	if len(d.dns.Questions) > 0 {
		q := d.dns.Questions[0]
		m.Question, m.Type = fqdn(q.Name), rrType(q.Type)
	}
	if m.Response {
		m.Rcode = rcode(d.dns.ResponseCode)
		for i := range d.dns.Answers {
			m.Answers = append(m.Answers, answer(&d.dns.Answers[i]))
		}
	}
	h.Kind, h.DNS = trace.HopDNS, m
}

// decodeDNS decodes a DNS message with gopacket, whose v1.1.19 DNS decoder
// panics on some malformed resource records (google/gopacket#881); such a
// panic becomes an error, as gopacket.NewPacket also turns it into one.
func (d *Decoder) decodeDNS(data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed DNS message: %v", r)
		}
	}()
	return d.dns.DecodeFromBytes(data, gopacket.NilDecodeFeedback)
}

func fqdn(name []byte) string {
	if len(name) == 0 || name[len(name)-1] != '.' {
		return string(name) + "."
	}
	return string(name)
}

// rcode names a response code as dig prints it.
func rcode(c layers.DNSResponseCode) string {
	switch c {
	case layers.DNSResponseCodeNoErr:
		return "NOERROR"
	case layers.DNSResponseCodeFormErr:
		return "FORMERR"
	case layers.DNSResponseCodeServFail:
		return "SERVFAIL"
	case layers.DNSResponseCodeNXDomain:
		return "NXDOMAIN"
	case layers.DNSResponseCodeNotImp:
		return "NOTIMP"
	case layers.DNSResponseCodeRefused:
		return "REFUSED"
	}
	return "RCODE" + strconv.Itoa(int(c))
}

// rrType names a record type, as "TYPE65" when gopacket does not know it.
func rrType(t layers.DNSType) string {
	if s := t.String(); s != "Unknown" {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

// answer formats a resource record as "A 10.96.0.10" or "CNAME name.".
func answer(rr *layers.DNSResourceRecord) string {
	t := rrType(rr.Type)
	switch rr.Type {
	case layers.DNSTypeA, layers.DNSTypeAAAA:
		return t + " " + rr.IP.String()
	case layers.DNSTypeCNAME:
		return t + " " + fqdn(rr.CNAME)
	case layers.DNSTypePTR:
		return t + " " + fqdn(rr.PTR)
	case layers.DNSTypeNS:
		return t + " " + fqdn(rr.NS)
	case layers.DNSTypeSRV:
		return fmt.Sprintf("%s %d %d %d %s", t, rr.SRV.Priority, rr.SRV.Weight, rr.SRV.Port, fqdn(rr.SRV.Name))
	}
	return t
}

func (d *Decoder) icmpMessage(h *trace.Hop, p *trace.Packet, data []byte) error {
	p.Proto = trace.ICMP
	if err := d.icmp.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("decoding icmp: %w", err)
	}
	p.ICMPType, p.ICMPCode = d.icmp.TypeCode.Type(), d.icmp.TypeCode.Code()
	switch p.ICMPType {
	case layers.ICMPv4TypeEchoRequest, layers.ICMPv4TypeEchoReply:
		p.ICMPID, p.ICMPSeq = d.icmp.Id, d.icmp.Seq
	case layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4TypeTimeExceeded:
		h.Note = icmpError(p.ICMPType, p.ICMPCode) + quoted(d.icmp.Payload)
	}
	return nil
}

// icmpError names an ICMP error as the kernel's constants do.
func icmpError(typ, code uint8) string {
	if typ == layers.ICMPv4TypeTimeExceeded {
		if code == layers.ICMPv4CodeTTLExceeded {
			return "ttl exceeded"
		}
		return "fragment reassembly time exceeded"
	}
	switch code {
	case layers.ICMPv4CodeNet:
		return "net unreachable"
	case layers.ICMPv4CodeHost:
		return "host unreachable"
	case layers.ICMPv4CodeProtocol:
		return "protocol unreachable"
	case layers.ICMPv4CodePort:
		return "port unreachable"
	case layers.ICMPv4CodeFragmentationNeeded:
		return "fragmentation needed"
	case layers.ICMPv4CodeNetAdminProhibited, layers.ICMPv4CodeHostAdminProhibited,
		layers.ICMPv4CodeCommAdminProhibited:
		return "administratively prohibited"
	}
	return "unreachable code " + strconv.Itoa(int(code))
}

// quoted describes the packet an ICMP error quotes: " for udp a:1 > b:2".
// It decodes by hand so as not to disturb the decoder's layers.
func quoted(data []byte) string {
	if len(data) < 20 || data[0]>>4 != 4 {
		return ""
	}
	ihl := int(data[0]&0x0f) * 4
	src, dst := addr(data[12:16]), addr(data[16:20])
	proto := layers.IPProtocol(data[9])
	f := trace.Flow{Src: src, Dst: dst}
	switch proto {
	case layers.IPProtocolTCP:
		f.Proto = trace.TCP
	case layers.IPProtocolUDP:
		f.Proto = trace.UDP
	default:
		return fmt.Sprintf(" for %s %s > %s", proto, src, dst)
	}
	if ihl < 20 || len(data) < ihl+4 {
		return fmt.Sprintf(" for %s %s > %s", f.Proto, src, dst)
	}
	f.SrcPort = uint16(data[ihl])<<8 | uint16(data[ihl+1])
	f.DstPort = uint16(data[ihl+2])<<8 | uint16(data[ihl+3])
	return " for " + f.String()
}

// addr converts a 4-byte slice; anything else is the zero Addr.
func addr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}
