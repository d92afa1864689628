package conntrack

import (
	"net/netip"
	"reflect"
	"testing"

	ct "github.com/ti-mo/conntrack"

	"github.com/kubectl-nettrace/nettrace/trace"
)

func ep(s string) trace.Endpoint { return netip.MustParseAddrPort(s) }

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestNATs(t *testing.T) {
	tests := []struct {
		name            string
		original, reply trace.Tuple
		want            []trace.NAT
	}{{
		name:     "no NAT",
		original: trace.Tuple{Proto: trace.TCP, Src: ep("172.16.158.16:40001"), Dst: ep("172.16.158.2:80")},
		reply:    trace.Tuple{Proto: trace.TCP, Src: ep("172.16.158.2:80"), Dst: ep("172.16.158.16:40001")},
	}, {
		name:     "service DNAT",
		original: trace.Tuple{Proto: trace.TCP, Src: ep("172.16.158.16:40001"), Dst: ep("10.96.143.238:80")},
		reply:    trace.Tuple{Proto: trace.TCP, Src: ep("172.16.158.2:80"), Dst: ep("172.16.158.16:40001")},
		want:     []trace.NAT{{Type: "DNAT", From: ep("10.96.143.238:80"), To: ep("172.16.158.2:80")}},
	}, {
		name:     "masquerade",
		original: trace.Tuple{Proto: trace.UDP, Src: ep("172.16.158.16:40001"), Dst: ep("192.168.10.1:53")},
		reply:    trace.Tuple{Proto: trace.UDP, Src: ep("192.168.10.1:53"), Dst: ep("192.168.10.101:40001")},
		want:     []trace.NAT{{Type: "SNAT", From: ep("172.16.158.16:40001"), To: ep("192.168.10.101:40001")}},
	}, {
		name:     "DNAT then SNAT with a new port",
		original: trace.Tuple{Proto: trace.TCP, Src: ep("172.16.158.16:40001"), Dst: ep("10.96.143.238:80")},
		reply:    trace.Tuple{Proto: trace.TCP, Src: ep("172.16.184.2:8080"), Dst: ep("192.168.10.101:61000")},
		want: []trace.NAT{
			{Type: "DNAT", From: ep("10.96.143.238:80"), To: ep("172.16.184.2:8080")},
			{Type: "SNAT", From: ep("172.16.158.16:40001"), To: ep("192.168.10.101:61000")},
		},
	}, {
		name:     "ICMP DNAT",
		original: trace.Tuple{Proto: trace.ICMP, Src: ep("172.16.158.16:40001"), Dst: ep("10.96.0.10:0")},
		reply:    trace.Tuple{Proto: trace.ICMP, Src: ep("172.16.184.3:0"), Dst: ep("172.16.158.16:40001")},
		want:     []trace.NAT{{Type: "DNAT", From: ep("10.96.0.10:0"), To: ep("172.16.184.3:0")}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range tt.want {
				tt.want[i].Original, tt.want[i].Reply = tt.original, tt.reply
			}
			if got := NATs(tt.original, tt.reply); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("NATs() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFlowsOf(t *testing.T) {
	tests := []struct {
		name                  string
		entry                 ct.Flow
		wantRequest, wantBack trace.Flow
	}{{
		name: "TCP DNAT and SNAT",
		entry: ct.Flow{
			TupleOrig: ct.Tuple{IP: ct.IPTuple{SourceAddress: addr("172.16.158.16"), DestinationAddress: addr("10.96.143.238")},
				Proto: ct.ProtoTuple{Protocol: 6, SourcePort: 40001, DestinationPort: 80}},
			TupleReply: ct.Tuple{IP: ct.IPTuple{SourceAddress: addr("172.16.184.2"), DestinationAddress: addr("192.168.10.101")},
				Proto: ct.ProtoTuple{Protocol: 6, SourcePort: 8080, DestinationPort: 40001}},
		},
		wantRequest: trace.Flow{Proto: trace.TCP, Src: addr("192.168.10.101"), SrcPort: 40001, Dst: addr("172.16.184.2"), DstPort: 8080},
		wantBack:    trace.Flow{Proto: trace.TCP, Src: addr("172.16.184.2"), SrcPort: 8080, Dst: addr("192.168.10.101"), DstPort: 40001},
	}, {
		name: "ICMP echo with a remapped identifier",
		entry: ct.Flow{
			TupleOrig: ct.Tuple{IP: ct.IPTuple{SourceAddress: addr("172.16.158.16"), DestinationAddress: addr("10.96.0.10")},
				Proto: ct.ProtoTuple{Protocol: 1, ICMPv4: true, ICMPID: 40001, ICMPType: 8}},
			TupleReply: ct.Tuple{IP: ct.IPTuple{SourceAddress: addr("172.16.184.3"), DestinationAddress: addr("192.168.10.101")},
				Proto: ct.ProtoTuple{Protocol: 1, ICMPv4: true, ICMPID: 7, ICMPType: 0}},
		},
		wantRequest: trace.Flow{Proto: trace.ICMP, Src: addr("192.168.10.101"), SrcPort: 7, Dst: addr("172.16.184.3")},
		wantBack:    trace.Flow{Proto: trace.ICMP, Src: addr("172.16.184.3"), SrcPort: 7, Dst: addr("192.168.10.101")},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			request, back, err := FlowsOf(tt.entry)
			if err != nil {
				t.Fatal(err)
			}
			if request != tt.wantRequest || back != tt.wantBack {
				t.Errorf("FlowsOf() = %v, %v; want %v, %v", request, back, tt.wantRequest, tt.wantBack)
			}
		})
	}
	if _, _, err := FlowsOf(ct.Flow{TupleOrig: ct.Tuple{Proto: ct.ProtoTuple{Protocol: 132}}}); err == nil {
		t.Error("FlowsOf(SCTP entry) succeeded, want an error")
	}
}

func TestMatches(t *testing.T) {
	tcp := trace.Tuple{Proto: trace.TCP, Src: ep("10.1.0.2:40001"), Dst: ep("10.96.0.10:80")}
	tcpReply := trace.Tuple{Proto: trace.TCP, Src: ep("10.2.0.2:8080"), Dst: ep("10.2.0.1:51000")}
	icmp := trace.Tuple{Proto: trace.ICMP, Src: ep("10.1.0.2:40001"), Dst: ep("10.96.0.10:0")}
	icmpReply := trace.Tuple{Proto: trace.ICMP, Src: ep("10.2.0.2:0"), Dst: ep("10.2.0.1:40001")}
	tests := []struct {
		name            string
		m               trace.Match
		original, reply trace.Tuple
		want            bool
	}{
		{"TCP by source port", trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}, tcp, tcpReply, true},
		{"TCP by port after SNAT", trace.Match{Proto: trace.TCP, Ports: []uint16{51000}}, tcp, tcpReply, true},
		{"TCP by destination port", trace.Match{Proto: trace.TCP, Ports: []uint16{8080}}, tcp, tcpReply, true},
		{"TCP by one of several ports", trace.Match{Proto: trace.TCP, Ports: []uint16{40002, 8080}}, tcp, tcpReply, true},
		{"TCP other port", trace.Match{Proto: trace.TCP, Ports: []uint16{40002}}, tcp, tcpReply, false},
		{"TCP by the service", trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{ep("10.96.0.10:80")}}, tcp, tcpReply, true},
		{"TCP by the endpoint", trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{ep("10.2.0.2:8080")}}, tcp, tcpReply, true},
		{"TCP by an address, any port", trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{ep("10.2.0.1:0")}}, tcp, tcpReply, true},
		{"TCP by another end", trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{ep("10.2.0.2:8081")}}, tcp, tcpReply, false},
		{"TCP with nothing to match", trace.Match{Proto: trace.TCP, Addrs: []netip.Addr{addr("10.96.0.10")}}, tcp, tcpReply, false},
		{"other protocol", trace.Match{Proto: trace.UDP, Ports: []uint16{40001}}, tcp, tcpReply, false},
		{"ICMP by address", trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{addr("10.96.0.10")}}, icmp, icmpReply, true},
		{"ICMP by address and id", trace.Match{Proto: trace.ICMP, Ports: []uint16{40001}, Addrs: []netip.Addr{addr("10.2.0.2")}}, icmp, icmpReply, true},
		{"ICMP other id", trace.Match{Proto: trace.ICMP, Ports: []uint16{40002}, Addrs: []netip.Addr{addr("10.96.0.10")}}, icmp, icmpReply, false},
		{"ICMP other address", trace.Match{Proto: trace.ICMP, Addrs: []netip.Addr{addr("10.9.9.9")}}, icmp, icmpReply, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matches(tt.m, tt.original, tt.reply); got != tt.want {
				t.Errorf("matches() = %v, want %v", got, tt.want)
			}
		})
	}
}
