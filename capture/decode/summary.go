package decode

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Summary is a one-line annotation of a captured hop, in the manner of
// tcpdump, such as
//
//	ipip 192.168.10.101 > 192.168.10.102: tcp 172.16.1.5:40001 > 10.96.0.10:80 S ttl 63 len 60
//	arp reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
//	dns answer 0x1a2b A kubernetes.default.svc.cluster.local. NOERROR A 10.96.0.1
//
// It is the comment of the packet in a pcapng file.
func Summary(h trace.Hop) string {
	var b strings.Builder
	switch {
	case h.ARP != nil:
		a := h.ARP
		if a.Op == "reply" {
			fmt.Fprintf(&b, "arp reply %s is-at %s", a.SenderIP, a.SenderMAC)
		} else {
			fmt.Fprintf(&b, "arp %s who-has %s tell %s", a.Op, a.TargetIP, a.SenderIP)
		}
	case h.Packet != nil:
		packet(&b, h.Packet)
		if h.DNS != nil {
			b.WriteString(": ")
			message(&b, h.DNS)
		}
	default:
		b.WriteString(string(h.Kind))
	}
	if h.Note != "" {
		fmt.Fprintf(&b, " (%s)", h.Note)
	}
	return b.String()
}

func packet(b *strings.Builder, p *trace.Packet) {
	if o := p.Outer; o != nil {
		b.WriteString(o.Type)
		if o.Type == "vxlan" {
			fmt.Fprintf(b, " vni %d", o.VNI)
		}
		fmt.Fprintf(b, " %s > %s: ", o.Src, o.Dst)
	}
	switch p.Proto {
	case trace.TCP:
		fmt.Fprintf(b, "tcp %s > %s %s", endpoint(p.Src, p.SrcPort), endpoint(p.Dst, p.DstPort), p.TCPFlags)
	case trace.UDP:
		fmt.Fprintf(b, "udp %s > %s", endpoint(p.Src, p.SrcPort), endpoint(p.Dst, p.DstPort))
	case trace.ICMP:
		fmt.Fprintf(b, "icmp %s > %s type %d code %d", p.Src, p.Dst, p.ICMPType, p.ICMPCode)
		if p.ICMPType == 0 || p.ICMPType == 8 {
			fmt.Fprintf(b, " id %d seq %d", p.ICMPID, p.ICMPSeq)
		}
	default:
		fmt.Fprintf(b, "ip %s > %s", p.Src, p.Dst)
	}
	fmt.Fprintf(b, " ttl %d len %d", p.TTL, p.Length)
}

func endpoint(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

func message(b *strings.Builder, m *trace.DNS) {
	kind := "query"
	if m.Response {
		kind = "answer"
	}
	fmt.Fprintf(b, "dns %s %#04x %s %s", kind, m.ID, m.Type, m.Question)
	if m.Response {
		fmt.Fprintf(b, " %s", m.Rcode)
		for _, a := range m.Answers {
			fmt.Fprintf(b, " %s", a)
		}
	}
}
