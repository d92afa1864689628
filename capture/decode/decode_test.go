package decode

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/kubectl-nettrace/nettrace/capture/internal/testpackets"
	"github.com/kubectl-nettrace/nettrace/trace"
)

var (
	pod     = netip.MustParseAddr("172.16.1.5")
	svc     = netip.MustParseAddr("10.96.0.10")
	nodeA   = netip.MustParseAddr("192.168.10.101")
	nodeB   = netip.MustParseAddr("192.168.10.102")
	gateway = netip.MustParseAddr("169.254.1.1")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func decode(t *testing.T, data []byte, link layers.LinkType) trace.Hop {
	t.Helper()
	var d Decoder
	h, err := d.Decode(data, link)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if h.Source != Source {
		t.Errorf("Source = %q, want %q", h.Source, Source)
	}
	return h
}

func TestDecodePackets(t *testing.T) {
	syn := testpackets.TCPSyn(ap(pod, 40001), ap(svc, 80))
	udp := testpackets.UDP(ap(pod, 40001), ap(svc, 8080), []byte("hello"))
	echo := testpackets.ICMPEcho(pod, svc, 77, 3)
	tests := []struct {
		name    string
		data    []byte
		want    trace.Packet
		summary string
	}{{
		name:    "tcp syn",
		data:    syn,
		want:    trace.Packet{Proto: trace.TCP, Src: pod, SrcPort: 40001, Dst: svc, DstPort: 80, Length: 52, TTL: 64, TCPFlags: "S"},
		summary: "tcp 172.16.1.5:40001 > 10.96.0.10:80 S ttl 64 len 52",
	}, {
		name:    "tcp syn cut inside its options",
		data:    syn[:45],
		want:    trace.Packet{Proto: trace.TCP, Src: pod, SrcPort: 40001, Dst: svc, DstPort: 80, Length: 52, TTL: 64, TCPFlags: "S"},
		summary: "tcp 172.16.1.5:40001 > 10.96.0.10:80 S ttl 64 len 52",
	}, {
		name:    "udp",
		data:    udp,
		want:    trace.Packet{Proto: trace.UDP, Src: pod, SrcPort: 40001, Dst: svc, DstPort: 8080, Length: 33, TTL: 64},
		summary: "udp 172.16.1.5:40001 > 10.96.0.10:8080 ttl 64 len 33",
	}, {
		name:    "icmp echo",
		data:    echo,
		want:    trace.Packet{Proto: trace.ICMP, Src: pod, Dst: svc, Length: 32, TTL: 64, ICMPType: 8, ICMPID: 77, ICMPSeq: 3},
		summary: "icmp 172.16.1.5 > 10.96.0.10 type 8 code 0 id 77 seq 3 ttl 64 len 32",
	}, {
		name: "ipip",
		data: testpackets.IPIP(nodeA, nodeB, syn),
		want: trace.Packet{Proto: trace.TCP, Src: pod, SrcPort: 40001, Dst: svc, DstPort: 80, Length: 52, TTL: 64, TCPFlags: "S",
			Outer: &trace.Tunnel{Type: "ipip", Src: nodeA, Dst: nodeB}},
		summary: "ipip 192.168.10.101 > 192.168.10.102: tcp 172.16.1.5:40001 > 10.96.0.10:80 S ttl 64 len 52",
	}, {
		name: "vxlan",
		data: testpackets.VXLAN(nodeA, nodeB, 4096, echo),
		want: trace.Packet{Proto: trace.ICMP, Src: pod, Dst: svc, Length: 32, TTL: 64, ICMPType: 8, ICMPID: 77, ICMPSeq: 3,
			Outer: &trace.Tunnel{Type: "vxlan", Src: nodeA, Dst: nodeB, VNI: 4096}},
		summary: "vxlan vni 4096 192.168.10.101 > 192.168.10.102: icmp 172.16.1.5 > 10.96.0.10 type 8 code 0 id 77 seq 3 ttl 64 len 32",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, link := range []layers.LinkType{layers.LinkTypeRaw, layers.LinkTypeEthernet} {
				data := tc.data
				if link == layers.LinkTypeEthernet {
					data = testpackets.EthernetIPv4(data)
				}
				h := decode(t, data, link)
				if h.Kind != trace.HopInterface || h.Packet == nil {
					t.Fatalf("%s: hop %+v, want an interface hop with a packet", link, h)
				}
				if !reflect.DeepEqual(*h.Packet, tc.want) {
					t.Errorf("%s: packet\n got %+v\nwant %+v", link, *h.Packet, tc.want)
				}
				if got := Summary(h); got != tc.summary {
					t.Errorf("%s: summary\n got %q\nwant %q", link, got, tc.summary)
				}
			}
		})
	}
}

func TestDecodeICMPError(t *testing.T) {
	orig := testpackets.UDP(ap(pod, 40001), ap(svc, 53), nil)
	h := decode(t, testpackets.ICMPError(nodeA, pod, 3, 3, orig), layers.LinkTypeRaw)
	if p := h.Packet; p.ICMPType != 3 || p.ICMPCode != 3 || p.Src != nodeA || p.Dst != pod {
		t.Errorf("packet %+v, want port unreachable from %s to %s", p, nodeA, pod)
	}
	if want := "port unreachable for udp 172.16.1.5:40001 > 10.96.0.10:53"; h.Note != want {
		t.Errorf("Note = %q, want %q", h.Note, want)
	}
}

func TestDecodeARP(t *testing.T) {
	request := decode(t, testpackets.ARPRequest(testpackets.MACA, pod, gateway), layers.LinkTypeEthernet)
	want := trace.ARP{Op: "request", SenderIP: pod, SenderMAC: "02:00:00:00:00:0a", TargetIP: gateway}
	if request.Kind != trace.HopARP || request.ARP == nil || *request.ARP != want {
		t.Errorf("request: %+v, want ARP %+v", request, want)
	}
	if got, want := Summary(request), "arp request who-has 169.254.1.1 tell 172.16.1.5"; got != want {
		t.Errorf("request summary %q, want %q", got, want)
	}

	reply := decode(t, testpackets.ARPReply(testpackets.ProxyMAC, gateway, testpackets.MACA, pod), layers.LinkTypeEthernet)
	want = trace.ARP{Op: "reply", SenderIP: gateway, SenderMAC: "ee:ee:ee:ee:ee:ee", TargetIP: pod,
		TargetMAC: "02:00:00:00:00:0a", Proxy: true}
	if reply.ARP == nil || *reply.ARP != want || reply.Note != NoteProxyARP {
		t.Errorf("proxy reply: %+v %+v, want ARP %+v with note %q", reply, reply.ARP, want, NoteProxyARP)
	}
	if got, want := Summary(reply), "arp reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)"; got != want {
		t.Errorf("reply summary %q, want %q", got, want)
	}

	plain := decode(t, testpackets.ARPReply(testpackets.MACB, svc, testpackets.MACA, pod), layers.LinkTypeEthernet)
	if plain.ARP == nil || plain.ARP.Proxy || plain.Note != "" {
		t.Errorf("ordinary reply marked as proxy: %+v %+v", plain, plain.ARP)
	}
}

func TestDecodeDNS(t *testing.T) {
	name := "kubernetes.default.svc.cluster.local."
	query := decode(t, testpackets.DNSQuery(ap(pod, 33333), ap(svc, 53), 0x1a2b, name), layers.LinkTypeRaw)
	want := trace.DNS{ID: 0x1a2b, Question: name, Type: "A"}
	if query.Kind != trace.HopDNS || query.DNS == nil || !reflect.DeepEqual(*query.DNS, want) {
		t.Fatalf("query: %+v, want DNS %+v", query.DNS, want)
	}
	if query.Packet == nil || query.Packet.DstPort != 53 {
		t.Errorf("query packet %+v, want the UDP header to port 53", query.Packet)
	}

	answer := testpackets.UDP(ap(svc, 53), ap(pod, 33333),
		testpackets.DNSMessage(0x1a2b, name, true, []netip.Addr{netip.MustParseAddr("10.96.0.1")}))
	got := decode(t, testpackets.IPIP(nodeB, nodeA, answer), layers.LinkTypeRaw)
	want = trace.DNS{ID: 0x1a2b, Response: true, Question: name, Type: "A", Rcode: "NOERROR", Answers: []string{"A 10.96.0.1"}}
	if got.Kind != trace.HopDNS || got.DNS == nil || !reflect.DeepEqual(*got.DNS, want) {
		t.Fatalf("answer: %+v, want DNS %+v", got.DNS, want)
	}
	if got.Packet.Outer == nil || got.Packet.Outer.Type != "ipip" {
		t.Errorf("answer over ipip: outer %+v", got.Packet.Outer)
	}
	if s := Summary(got); !strings.HasSuffix(s, ": dns answer 0x1a2b A "+name+" NOERROR A 10.96.0.1") {
		t.Errorf("answer summary %q", s)
	}

	nx := testpackets.UDP(ap(svc, 53), ap(pod, 33333), testpackets.DNSMessage(9, "nope.", true, nil))
	if got := decode(t, nx, layers.LinkTypeRaw); got.DNS == nil || got.DNS.Rcode != "NXDOMAIN" {
		t.Errorf("nxdomain: %+v", got.DNS)
	}

	junk := decode(t, testpackets.UDP(ap(pod, 33333), ap(svc, 53), []byte{1, 2, 3}), layers.LinkTypeRaw)
	if junk.Kind != trace.HopInterface || !strings.HasPrefix(junk.Note, "undecodable DNS") {
		t.Errorf("junk on port 53: %+v", junk)
	}
}

func TestDecodeErrors(t *testing.T) {
	var d Decoder
	for name, tc := range map[string]struct {
		data []byte
		link layers.LinkType
	}{
		"empty":        {nil, layers.LinkTypeRaw},
		"ipv6":         {make([]byte, 40), layers.LinkTypeRaw},
		"short ip":     {testpackets.UDP(ap(pod, 1), ap(svc, 2), nil)[:12], layers.LinkTypeRaw},
		"short udp":    {testpackets.UDP(ap(pod, 1), ap(svc, 2), nil)[:24], layers.LinkTypeRaw},
		"ipv6 frame":   {testpackets.Ethernet(testpackets.MACA, testpackets.MACB, layers.EthernetTypeIPv6, make([]byte, 40)), layers.LinkTypeEthernet},
		"ppp":          {testpackets.UDP(ap(pod, 1), ap(svc, 2), nil), layers.LinkTypePPP},
		"short header": {testpackets.TCPSyn(ap(pod, 1), ap(svc, 2))[:30], layers.LinkTypeRaw},
	} {
		if _, err := d.Decode(tc.data, tc.link); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	ipv6 := make([]byte, 40)
	ipv6[0] = 0x60
	if _, err := d.Decode(ipv6, layers.LinkTypeRaw); !errors.Is(err, ErrUnsupported) {
		t.Errorf("ipv6: err %v, want ErrUnsupported", err)
	}
}
