package filter

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/gopacket/layers"
	"golang.org/x/net/bpf"

	"github.com/kubectl-nettrace/nettrace/capture/internal/testpackets"
	"github.com/kubectl-nettrace/nettrace/trace"
)

var (
	pod     = netip.MustParseAddr("172.16.1.5")
	svc     = netip.MustParseAddr("10.96.0.10")
	other   = netip.MustParseAddr("172.16.2.9")
	nodeA   = netip.MustParseAddr("192.168.10.101")
	nodeB   = netip.MustParseAddr("192.168.10.102")
	gateway = netip.MustParseAddr("169.254.1.1")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// run executes the program on packet and returns the number of bytes kept,
// capped at the packet's length as the kernel does.
func run(t *testing.T, link layers.LinkType, opts Options, packet []byte) int {
	t.Helper()
	insns, err := Build(link, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if _, err := bpf.Assemble(insns); err != nil {
		t.Fatalf("Assemble: %v", err)
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatalf("NewVM: %v", err)
	}
	n, err := vm.Run(packet)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return min(n, len(packet))
}

// kept returns the bytes a program with opts should keep of packet.
func kept(opts Options, packet []byte, match bool) int {
	switch {
	case !match:
		return 0
	case opts.Snaplen == 0:
		return len(packet)
	}
	return min(int(opts.Snaplen), len(packet))
}

func TestFilterTCPUDP(t *testing.T) {
	udp := Options{Match: trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}, Snaplen: 64}
	tcp := Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}, Snaplen: 64}
	payload := make([]byte, 500)
	request := testpackets.UDP(ap(pod, 40001), ap(svc, 53), payload)
	reply := testpackets.UDP(ap(svc, 53), ap(pod, 40001), payload)
	unrelated := testpackets.UDP(ap(pod, 40002), ap(svc, 53), payload)
	syn := testpackets.TCPSyn(ap(pod, 40001), ap(svc, 80))
	unreachable := testpackets.ICMPError(nodeA, pod, 3, 3, request)
	unreachableOther := testpackets.ICMPError(nodeA, pod, 3, 3, unrelated)
	echo := testpackets.ICMPEcho(pod, svc, 40001, 1)
	withOptions := testpackets.UDPWithIPOptions(ap(pod, 40002), ap(svc, 8053), payload)
	if ihl := withOptions[0] & 0x0f; ihl != 6 {
		t.Fatalf("the packet with IPv4 options has a header of %d words, want 6", ihl)
	}
	end := Options{Match: trace.Match{Proto: trace.UDP, Ends: []netip.AddrPort{ap(svc, 8053)}}, Snaplen: 64}

	tests := []struct {
		name   string
		opts   Options
		packet []byte
		kept   bool
	}{
		{"udp request", udp, request, true},
		{"udp reply", udp, reply, true},
		{"udp other port", udp, unrelated, false},
		{"tcp packet for udp match", udp, syn, false},
		{"tcp syn", tcp, syn, true},
		{"udp packet for tcp match", tcp, request, false},
		{"icmp unreachable quoting the flow", udp, unreachable, true},
		{"icmp unreachable quoting another flow", udp, unreachableOther, false},
		{"icmp echo for udp match", udp, echo, false},
		{"udp over ipip", udp, testpackets.IPIP(nodeA, nodeB, request), true},
		{"other udp over ipip", udp, testpackets.IPIP(nodeA, nodeB, unrelated), false},
		{"udp over vxlan", udp, testpackets.VXLAN(nodeA, nodeB, 4096, request), true},
		{"other udp over vxlan", udp, testpackets.VXLAN(nodeA, nodeB, 4096, unrelated), false},
		{"dns not asked", udp, testpackets.DNSQuery(ap(pod, 33333), ap(svc, 53), 7, "x."), false},
		{"any port", Options{Match: trace.Match{Proto: trace.UDP}}, unrelated, true},
		{"udp request with ip options", udp, testpackets.UDPWithIPOptions(ap(pod, 40001), ap(svc, 53), payload), true},
		{"udp reply with ip options", udp, testpackets.UDPWithIPOptions(ap(svc, 53), ap(pod, 40001), payload), true},
		{"other udp with ip options", udp, testpackets.UDPWithIPOptions(ap(pod, 40002), ap(svc, 53), payload), false},
		{"end with ip options", end, withOptions, true},
		{"other end with ip options", end, testpackets.UDPWithIPOptions(ap(pod, 40002), ap(svc, 8054), payload), false},
		{"udp with ip options over ipip", udp, testpackets.IPIP(nodeA, nodeB,
			testpackets.UDPWithIPOptions(ap(pod, 40001), ap(svc, 53), payload)), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, link := range []layers.LinkType{layers.LinkTypeRaw, layers.LinkTypeEthernet} {
				packet := tc.packet
				if link == layers.LinkTypeEthernet {
					packet = testpackets.EthernetIPv4(packet)
				}
				want := kept(tc.opts, packet, tc.kept)
				if got := run(t, link, tc.opts, packet); got != want {
					t.Errorf("%s: kept %d bytes, want %d", link, got, want)
				}
			}
		})
	}
}

// TestFilterWidened checks a match widened across NAT: several ports, an
// end (an address and port) and an address-wide end, each on both sides of
// the packet, inside tunnels and quoted by ICMP errors.
func TestFilterWidened(t *testing.T) {
	snat := ap(nodeA, 61234) // the client after a MASQUERADE --random-fully
	endpoint := ap(other, 8080)
	opts := Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{40001, 40002},
		Ends: []netip.AddrPort{snat, endpoint, ap(gateway, 0)}}, Snaplen: 64}
	tests := []struct {
		name   string
		packet []byte
		kept   bool
	}{
		{"first port", testpackets.TCPSyn(ap(pod, 40001), ap(svc, 80)), true},
		{"second port, as destination", testpackets.TCPSyn(ap(svc, 80), ap(pod, 40002)), true},
		{"other ports", testpackets.TCPSyn(ap(pod, 40003), ap(svc, 80)), false},
		{"after SNAT", testpackets.TCPSyn(snat, ap(svc, 80)), true},
		{"reply to the SNAT end", testpackets.TCPSyn(ap(svc, 80), snat), true},
		{"SNAT address, other port", testpackets.TCPSyn(ap(nodeA, 61235), ap(svc, 80)), false},
		{"SNAT port, other address", testpackets.TCPSyn(ap(nodeB, 61234), ap(svc, 80)), false},
		{"to the endpoint", testpackets.TCPSyn(ap(nodeB, 33333), endpoint), true},
		{"from the endpoint", testpackets.TCPSyn(endpoint, ap(nodeB, 33333)), true},
		{"endpoint address, other port", testpackets.TCPSyn(ap(nodeB, 33333), ap(other, 8081)), false},
		{"any port of an address", testpackets.TCPSyn(ap(gateway, 1), ap(nodeB, 2)), true},
		{"udp to the endpoint", testpackets.UDP(ap(nodeB, 33333), endpoint, nil), false},
		{"to the endpoint over ipip", testpackets.IPIP(nodeA, nodeB, testpackets.TCPSyn(snat, endpoint)), true},
		{"to the endpoint over vxlan", testpackets.VXLAN(nodeA, nodeB, 1, testpackets.TCPSyn(snat, endpoint)), true},
		{"unreachable quoting the SNAT end", testpackets.ICMPError(nodeB, nodeA, 3, 1, testpackets.TCPSyn(snat, ap(svc, 80))), true},
		{"unreachable quoting another flow", testpackets.ICMPError(nodeB, nodeA, 3, 1, testpackets.TCPSyn(ap(nodeA, 1), ap(svc, 80))), false},
	}
	for _, tc := range tests {
		for _, link := range []layers.LinkType{layers.LinkTypeRaw, layers.LinkTypeEthernet} {
			packet := tc.packet
			if link == layers.LinkTypeEthernet {
				packet = testpackets.EthernetIPv4(packet)
			}
			if got, want := run(t, link, opts, packet), kept(opts, packet, tc.kept); got != want {
				t.Errorf("%s on %s: kept %d bytes, want %d", tc.name, link, got, want)
			}
		}
	}
	// Ends alone, without a port.
	endsOnly := Options{Match: trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{endpoint}}}
	if got := run(t, layers.LinkTypeRaw, endsOnly, testpackets.TCPSyn(ap(pod, 40001), ap(svc, 80))); got != 0 {
		t.Errorf("ends only, another flow: kept %d bytes, want 0", got)
	}
	if syn := testpackets.TCPSyn(ap(pod, 40001), endpoint); run(t, layers.LinkTypeRaw, endsOnly, syn) != len(syn) {
		t.Errorf("ends only, to the end: not kept whole")
	}
}

func TestFilterICMP(t *testing.T) {
	opts := Options{Match: trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{svc, pod}}, Snaplen: 96}
	tests := []struct {
		name   string
		packet []byte
		kept   bool
	}{
		{"echo to traced address", testpackets.ICMPEcho(other, svc, 1, 1), true},
		{"echo from traced address", testpackets.ICMPEcho(pod, other, 1, 1), true},
		{"echo between others", testpackets.ICMPEcho(other, nodeA, 1, 1), false},
		{"udp to traced address", testpackets.UDP(ap(other, 1), ap(svc, 2), nil), false},
		{"echo over ipip", testpackets.IPIP(nodeA, nodeB, testpackets.ICMPEcho(other, svc, 1, 1)), true},
		{"echo over vxlan", testpackets.VXLAN(nodeA, nodeB, 1, testpackets.ICMPEcho(pod, other, 1, 1)), true},
		{"other echo over vxlan", testpackets.VXLAN(nodeA, nodeB, 1, testpackets.ICMPEcho(other, nodeA, 1, 1)), false},
	}
	for _, tc := range tests {
		if got, want := run(t, layers.LinkTypeRaw, opts, tc.packet), kept(opts, tc.packet, tc.kept); got != want {
			t.Errorf("%s: kept %d bytes, want %d", tc.name, got, want)
		}
	}
}

func TestFilterDNSKeptWhole(t *testing.T) {
	opts := Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}, DNS: true, Snaplen: 64}
	query := testpackets.DNSQuery(ap(pod, 33333), ap(svc, 53), 7, "kubernetes.default.svc.cluster.local.")
	answer := testpackets.UDP(ap(svc, 53), ap(pod, 33333),
		testpackets.DNSMessage(7, "kubernetes.default.svc.cluster.local.", true, []netip.Addr{svc}))
	tunnelled := testpackets.IPIP(nodeA, nodeB, query)
	for name, packet := range map[string][]byte{"query": query, "answer": answer, "ipip query": tunnelled} {
		if got := run(t, layers.LinkTypeRaw, opts, packet); got != len(packet) {
			t.Errorf("%s: kept %d bytes, want all %d", name, got, len(packet))
		}
	}
	// The flow itself still matches, headers only.
	syn := testpackets.TCPSyn(ap(pod, 40001), ap(svc, 80))
	if got := run(t, layers.LinkTypeRaw, opts, syn); got != min(64, len(syn)) {
		t.Errorf("tcp flow with dns on: kept %d bytes, want %d", got, min(64, len(syn)))
	}
	if got := run(t, layers.LinkTypeRaw, opts, testpackets.UDP(ap(pod, 40001), ap(svc, 54), nil)); got != 0 {
		t.Errorf("udp to port 54: kept %d bytes, want 0", got)
	}
}

func TestFilterDNSFlowKeptWhole(t *testing.T) {
	name := "kubernetes.default.svc.cluster.local."
	answer := testpackets.UDP(ap(svc, 53), ap(pod, 33333),
		testpackets.DNSMessage(7, name, true, []netip.Addr{svc, other, nodeA, nodeB}))
	big := testpackets.UDP(ap(svc, 5353), ap(pod, 33333), make([]byte, 200))
	syn := testpackets.TCPSyn(ap(pod, 40001), ap(svc, 53))
	for _, tc := range []struct {
		name   string
		match  trace.Match
		packet []byte
		want   int
	}{
		{"port 53", trace.Match{Proto: trace.UDP, Ports: []uint16{53}}, answer, len(answer)},
		{"port 53 in ipip", trace.Match{Proto: trace.UDP, Ports: []uint16{53}},
			testpackets.IPIP(nodeA, nodeB, answer), len(answer) + 20},
		{"end on port 53", trace.Match{Proto: trace.UDP, Ends: []netip.AddrPort{ap(svc, 53)}}, answer, len(answer)},
		{"other udp port", trace.Match{Proto: trace.UDP, Ports: []uint16{5353}}, big, 64},
		{"tcp port 53", trace.Match{Proto: trace.TCP, Ports: []uint16{53}}, syn, min(64, len(syn))},
	} {
		opts := Options{Match: tc.match, Snaplen: 64}
		if got := run(t, layers.LinkTypeRaw, opts, tc.packet); got != tc.want {
			t.Errorf("%s: kept %d of %d bytes, want %d", tc.name, got, len(tc.packet), tc.want)
		}
	}
}

func TestFilterARP(t *testing.T) {
	opts := Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}, Snaplen: 128}
	request := testpackets.ARPRequest(testpackets.MACA, pod, gateway)
	reply := testpackets.ARPReply(testpackets.ProxyMAC, gateway, testpackets.MACA, pod)
	for name, packet := range map[string][]byte{"request": request, "reply": reply} {
		if got := run(t, layers.LinkTypeEthernet, opts, packet); got != len(packet) {
			t.Errorf("arp %s: kept %d bytes, want %d", name, got, len(packet))
		}
	}
	ipv6 := testpackets.Ethernet(testpackets.MACA, testpackets.MACB, layers.EthernetTypeIPv6, make([]byte, 60))
	if got := run(t, layers.LinkTypeEthernet, opts, ipv6); got != 0 {
		t.Errorf("ipv6 frame: kept %d bytes, want 0", got)
	}
}

func TestFilterRejectsFragments(t *testing.T) {
	opts := Options{Match: trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}}
	packet := testpackets.UDP(ap(pod, 1234), ap(svc, 5678), []byte{0x9c, 0x41, 0x9c, 0x41})
	// Make it a later fragment whose payload happens to start with the port.
	packet[6], packet[7] = 0x00, 0x01
	packet = append(packet[:20], packet[28:]...)
	packet[3] = byte(len(packet))
	if got := run(t, layers.LinkTypeRaw, opts, packet); got != 0 {
		t.Errorf("later fragment kept %d bytes, want 0", got)
	}
}

func TestBuildErrors(t *testing.T) {
	if _, err := Build(layers.LinkTypeRaw, Options{Match: trace.Match{Proto: "sctp"}}); err == nil {
		t.Error("unknown protocol: no error")
	}
	v6 := Options{Match: trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{netip.MustParseAddr("fd00::1")}}}
	if _, err := Build(layers.LinkTypeRaw, v6); err == nil {
		t.Error("IPv6 address: no error")
	}
	v6End := Options{Match: trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:80")}}}
	if _, err := Build(layers.LinkTypeRaw, v6End); err == nil {
		t.Error("IPv6 end: no error")
	}
	if _, err := Build(layers.LinkTypePPP, Options{Match: trace.Match{Proto: trace.TCP}}); err == nil {
		t.Error("PPP link: no error")
	}
	// Branches that reach too far go through trampolines: a service's
	// many addresses fit, up to the kernel's bound on the program.
	many := Options{Match: trace.Match{Proto: trace.ICMP}}
	for i := range 200 {
		many.Match.Addrs = append(many.Match.Addrs, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	echo := testpackets.ICMPEcho(pod, many.Match.Addrs[199], 1, 1)
	if got := run(t, layers.LinkTypeRaw, many, echo); got != len(echo) {
		t.Errorf("200 addresses, echo to the last: kept %d bytes, want %d", got, len(echo))
	}
	if got := run(t, layers.LinkTypeRaw, many, testpackets.ICMPEcho(pod, other, 1, 1)); got != 0 {
		t.Errorf("200 addresses, echo to another: kept %d bytes, want 0", got)
	}
	for i := 200; i < 2000; i++ {
		many.Match.Addrs = append(many.Match.Addrs, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	if _, err := Build(layers.LinkTypeRaw, many); !errors.Is(err, errTooLong) {
		t.Errorf("2000 addresses: err %v, want %v", err, errTooLong)
	}
	manyEnds := Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}}
	for i := range 50 {
		manyEnds.Match.Ends = append(manyEnds.Match.Ends, ap(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 8080))
	}
	last := testpackets.TCPSyn(ap(pod, 33333), manyEnds.Match.Ends[49])
	if got := run(t, layers.LinkTypeRaw, manyEnds, last); got != len(last) {
		t.Errorf("50 ends, to the last: kept %d bytes, want %d", got, len(last))
	}
}

// TestFilterLoadsTheOuterHeaderDirectly checks that the loads from the
// outer IPv4 header, which every packet on the interface meets, are at
// absolute offsets: the kernel reads those directly, where an X-relative
// load calls a helper. Only the headers behind a variable IPv4 header
// length need X.
func TestFilterLoadsTheOuterHeaderDirectly(t *testing.T) {
	for _, opts := range []Options{
		{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{80}, Ends: []netip.AddrPort{ap(svc, 80)}}, Snaplen: 128},
		{Match: trace.Match{Proto: trace.UDP, Ports: []uint16{53}}, DNS: true, Snaplen: 128},
		{Match: trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{pod}}, Snaplen: 128},
	} {
		insns, err := Build(layers.LinkTypeEthernet, opts)
		if err != nil {
			t.Fatal(err)
		}
		for i, insn := range insns {
			if _, ok := insn.(bpf.TAX); ok {
				break
			}
			if _, ok := insn.(bpf.LoadIndirect); ok {
				t.Errorf("%s: instruction %d, before X is first set, is %v", opts.Match.Proto, i, insn)
			}
		}
		// Behind an IPv4 header without options, the ports are read at
		// absolute offsets too.
		if opts.Match.Proto == trace.ICMP {
			continue
		}
		for _, port := range []uint32{etherLen + ipv4PlainLen, etherLen + ipv4PlainLen + 2} {
			if !slices.Contains(insns, bpf.Instruction(bpf.LoadAbsolute{Off: port, Size: 2})) {
				t.Errorf("%s: no absolute load of the port at %d", opts.Match.Proto, port)
			}
		}
	}
}
