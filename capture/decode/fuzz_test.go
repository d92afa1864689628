package decode

import (
	"io"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/kubectl-nettrace/nettrace/capture/internal/testpackets"
	"github.com/kubectl-nettrace/nettrace/trace"
)

// realPackets reads testdata/real.pcap, captured by tcpdump on the underlay
// veth of two netns joined by VXLAN (vni 42): ping inside and outside the
// tunnel, a DNS query with its NXDOMAIN answer, TCP SYN and RST in and out of
// the tunnel, and an ICMP port unreachable.
func realPackets(t testing.TB) [][]byte {
	t.Helper()
	f, err := os.Open("testdata/real.pcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("real.pcap has link type %s", r.LinkType())
	}
	var packets [][]byte
	for {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			return packets
		}
		if err != nil {
			t.Fatal(err)
		}
		packets = append(packets, data)
	}
}

func TestDecodeRealPackets(t *testing.T) {
	var d Decoder
	var summaries []string
	for _, data := range realPackets(t) {
		h, err := d.Decode(data, layers.LinkTypeEthernet)
		if err != nil {
			continue // IPv6 router solicitations and the like
		}
		summaries = append(summaries, Summary(h))
	}
	all := strings.Join(summaries, "\n")
	for _, want := range []string{
		"vxlan vni 42 192.168.50.1 > 192.168.50.2: icmp 10.42.0.1 > 10.42.0.2 type 8 code 0 id 6307 seq 1 ttl 64 len 84",
		"vxlan vni 42 192.168.50.2 > 192.168.50.1: icmp 10.42.0.2 > 10.42.0.1 type 0 code 0 id 6307 seq 1 ttl 64 len 84",
		"icmp 192.168.50.1 > 192.168.50.2 type 8 code 0 id 6342 seq 1 ttl 64 len 84",
		"udp 192.168.50.1:48104 > 192.168.50.2:53 ttl 64 len 105: dns query 0xc68c A kubernetes.default.svc.cluster.local.",
		"udp 192.168.50.2:53 > 192.168.50.1:48104 ttl 64 len 105: dns answer 0xc68c A kubernetes.default.svc.cluster.local. NXDOMAIN",
		"tcp 192.168.50.2:8080 > 192.168.50.1:52840 R. ttl 64 len 40",
		"vxlan vni 42 192.168.50.1 > 192.168.50.2: tcp 10.42.0.1:51798 > 10.42.0.2:8081 S ttl 64 len 60",
		"(port unreachable for udp 192.168.50.1:52776 > 192.168.50.2:5353)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no hop %q among:\n%s", want, all)
		}
	}
}

// FuzzDecode checks that no input makes the decoder panic (it calls decode,
// without Decode's recovery), that a hop
// that decodes is well formed, and that a reused decoder keeps no state
// from one packet to the next.
func FuzzDecode(f *testing.F) {
	for _, data := range realPackets(f) {
		f.Add(data, false)
	}
	pod, svc := netip.MustParseAddr("172.16.1.5"), netip.MustParseAddr("10.96.0.10")
	nodeA, nodeB := netip.MustParseAddr("192.168.10.101"), netip.MustParseAddr("192.168.10.102")
	syn := testpackets.TCPSyn(netip.AddrPortFrom(pod, 40001), netip.AddrPortFrom(svc, 80))
	query := testpackets.DNSQuery(netip.AddrPortFrom(pod, 33333), netip.AddrPortFrom(svc, 53), 1, "a.b.")
	for _, raw := range [][]byte{
		syn, query, testpackets.IPIP(nodeA, nodeB, syn), testpackets.IPIP(nodeA, nodeB, query),
		testpackets.ICMPError(nodeA, pod, 3, 3, query), testpackets.VXLAN(nodeA, nodeB, 7, syn),
	} {
		f.Add(raw, true)
	}
	f.Add(testpackets.ARPReply(testpackets.ProxyMAC, netip.MustParseAddr("169.254.1.1"), testpackets.MACA, pod), false)

	var reused Decoder
	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		link := layers.LinkTypeEthernet
		if raw {
			link = layers.LinkTypeRaw
		}
		var fresh Decoder
		h, err := fresh.decode(data, link)
		again, againErr := reused.decode(data, link)
		if (err == nil) != (againErr == nil) || !reflect.DeepEqual(h, again) {
			t.Fatalf("fresh and reused decoders differ:\n%+v %v\n%+v %v", h, err, again, againErr)
		}
		if err != nil {
			return
		}
		switch h.Kind {
		case trace.HopARP:
			if h.ARP == nil || h.Packet != nil {
				t.Fatalf("ARP hop %+v", h)
			}
		case trace.HopDNS:
			if h.DNS == nil || h.Packet == nil {
				t.Fatalf("DNS hop %+v", h)
			}
		case trace.HopInterface:
			if h.Packet == nil || !h.Packet.Src.Is4() || !h.Packet.Dst.Is4() {
				t.Fatalf("interface hop %+v", h)
			}
		default:
			t.Fatalf("hop of kind %q", h.Kind)
		}
		if Summary(h) == "" {
			t.Fatal("empty summary")
		}
	})
}
