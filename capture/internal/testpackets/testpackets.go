// Package testpackets builds real packets with gopacket serialisation for the
// tests of the capture packages: IPv4 with TCP, UDP, ICMP and DNS, ARP, and
// the same wrapped in IPIP, VXLAN and Ethernet. Checksums and lengths are
// computed, so the kernel accepts what these functions build.
package testpackets

import (
	"net"
	"net/netip"
	"strings"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// MACs used for Ethernet framing.
var (
	MACA     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	MACB     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
	ProxyMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
)

func serialize(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		panic("serializing test packet: " + err.Error())
	}
	return buf.Bytes()
}

func ipv4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

// UDP returns an IPv4 UDP packet.
func UDP(src netip.AddrPort, dst netip.AddrPort, payload []byte) []byte {
	ip := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(ip, udp, gopacket.Payload(payload))
}

// UDPWithIPOptions returns an IPv4 UDP packet whose IPv4 header carries
// a Router Alert option, 24 bytes long instead of 20.
func UDPWithIPOptions(src netip.AddrPort, dst netip.AddrPort, payload []byte) []byte {
	ip := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(ip, udp, gopacket.Payload(payload))
}

// TCPSyn returns an IPv4 TCP SYN with a 12-byte option block, like Linux sends.
func TCPSyn(src netip.AddrPort, dst netip.AddrPort) []byte {
	ip := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolTCP)
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: 1000, SYN: true, Window: 64240,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindNop},
		},
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return serialize(ip, tcp)
}

// ICMPEcho returns an IPv4 ICMP echo request.
func ICMPEcho(src, dst netip.Addr, id, seq uint16) []byte {
	ip := ipv4(src, dst, layers.IPProtocolICMPv4)
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: id, Seq: seq}
	return serialize(ip, icmp, gopacket.Payload("ping"))
}

// ICMPError returns an ICMP error of the given type and code from src to dst
// quoting the first 28 bytes of the packet orig, as a router would.
func ICMPError(src, dst netip.Addr, typ, code uint8, orig []byte) []byte {
	ip := ipv4(src, dst, layers.IPProtocolICMPv4)
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	return serialize(ip, icmp, gopacket.Payload(orig[:min(len(orig), 28)]))
}

// DNSQuery returns a UDP DNS query for name's A record.
func DNSQuery(src, dst netip.AddrPort, id uint16, name string) []byte {
	return UDP(src, dst, DNSMessage(id, name, false, nil))
}

// DNSMessage returns a DNS message: a query for name's A record or, when
// response is set, an answer with the given addresses (NXDOMAIN without).
func DNSMessage(id uint16, name string, response bool, answers []netip.Addr) []byte {
	name = strings.TrimSuffix(name, ".") // gopacket writes the root label itself
	d := &layers.DNS{
		ID: id, QR: response, RD: true, RA: response, OpCode: layers.DNSOpCodeQuery,
		Questions: []layers.DNSQuestion{{Name: []byte(name), Type: layers.DNSTypeA, Class: layers.DNSClassIN}},
	}
	if response && len(answers) == 0 {
		d.ResponseCode = layers.DNSResponseCodeNXDomain
	}
	for _, a := range answers {
		d.Answers = append(d.Answers, layers.DNSResourceRecord{
			Name: []byte(name), Type: layers.DNSTypeA, Class: layers.DNSClassIN, TTL: 30, IP: a.AsSlice(),
		})
	}
	return serialize(d)
}

// IPIP wraps the IPv4 packet inner in an outer IPv4 header (protocol 4).
func IPIP(src, dst netip.Addr, inner []byte) []byte {
	return serialize(ipv4(src, dst, layers.IPProtocolIPv4), gopacket.Payload(inner))
}

// VXLAN wraps the IPv4 packet inner in Ethernet, VXLAN with vni, UDP to
// port 4789 and an outer IPv4 header.
func VXLAN(src, dst netip.Addr, vni uint32, inner []byte) []byte {
	ip := ipv4(src, dst, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: 40000, DstPort: 4789}
	_ = udp.SetNetworkLayerForChecksum(ip)
	frame := Ethernet(MACA, MACB, layers.EthernetTypeIPv4, inner)
	return serialize(ip, udp, &layers.VXLAN{ValidIDFlag: true, VNI: vni}, gopacket.Payload(frame))
}

// Ethernet frames payload.
func Ethernet(src, dst net.HardwareAddr, typ layers.EthernetType, payload []byte) []byte {
	return serialize(&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: typ}, gopacket.Payload(payload))
}

// EthernetIPv4 frames an IPv4 packet from MACA to MACB.
func EthernetIPv4(packet []byte) []byte {
	return Ethernet(MACA, MACB, layers.EthernetTypeIPv4, packet)
}

// ARPRequest returns an Ethernet broadcast asking who has target.
func ARPRequest(senderMAC net.HardwareAddr, sender, target netip.Addr) []byte {
	arp := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: senderMAC, SourceProtAddress: sender.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: target.AsSlice(),
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	return serialize(&layers.Ethernet{SrcMAC: senderMAC, DstMAC: bcast, EthernetType: layers.EthernetTypeARP}, arp)
}

// ARPReply returns an Ethernet ARP reply: sender is at senderMAC.
func ARPReply(senderMAC net.HardwareAddr, sender netip.Addr, targetMAC net.HardwareAddr, target netip.Addr) []byte {
	arp := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPReply, SourceHwAddress: senderMAC, SourceProtAddress: sender.AsSlice(),
		DstHwAddress: targetMAC, DstProtAddress: target.AsSlice(),
	}
	return serialize(&layers.Ethernet{SrcMAC: senderMAC, DstMAC: targetMAC, EthernetType: layers.EthernetTypeARP}, arp)
}
