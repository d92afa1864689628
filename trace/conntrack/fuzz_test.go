package conntrack

import (
	"net/netip"
	"testing"

	ct "github.com/ti-mo/conntrack"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// FuzzNATs derives NAT from arbitrary conntrack entries and checks that the
// rewrites, applied to the original direction, give the request after NAT
// that Flows reports, which is the reply tuple turned around.
func FuzzNATs(f *testing.F) {
	f.Add(uint8(6), []byte{172, 16, 158, 16}, []byte{10, 96, 143, 238}, uint16(40001), uint16(80),
		[]byte{172, 16, 158, 2}, []byte{192, 168, 10, 101}, uint16(8080), uint16(40001))
	f.Add(uint8(1), []byte{10, 1, 0, 2}, []byte{10, 96, 0, 10}, uint16(40001), uint16(0),
		[]byte{10, 2, 0, 2}, []byte{10, 2, 0, 1}, uint16(0), uint16(40001))
	f.Add(uint8(17), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{1, 2, 3, 4}, uint16(1), uint16(2),
		[]byte{}, []byte{9}, uint16(3), uint16(4))
	f.Fuzz(func(t *testing.T, proto uint8, oSrc, oDst []byte, oSport, oDport uint16,
		rSrc, rDst []byte, rSport, rDport uint16) {
		entry := ct.Flow{
			TupleOrig: ct.Tuple{IP: ct.IPTuple{SourceAddress: fuzzAddr(oSrc), DestinationAddress: fuzzAddr(oDst)},
				Proto: ct.ProtoTuple{Protocol: proto, SourcePort: oSport, DestinationPort: oDport, ICMPID: oSport}},
			TupleReply: ct.Tuple{IP: ct.IPTuple{SourceAddress: fuzzAddr(rSrc), DestinationAddress: fuzzAddr(rDst)},
				Proto: ct.ProtoTuple{Protocol: proto, SourcePort: rSport, DestinationPort: rDport, ICMPID: rDport}},
		}
		original, reply, err := Tuples(entry)
		if err != nil {
			if _, known := map[uint8]bool{1: true, 6: true, 17: true}[proto]; known {
				t.Fatalf("Tuples() of protocol %d: %v", proto, err)
			}
			return
		}
		nats := NATs(original, reply)
		if len(nats) > 2 {
			t.Fatalf("%d rewrites, at most 2 possible", len(nats))
		}
		after := original
		for i, n := range nats {
			if n.From == n.To {
				t.Errorf("%s rewrites %s to itself", n.Type, n.From)
			}
			if n.Original != original || n.Reply != reply {
				t.Errorf("%s does not carry both tuples", n.Type)
			}
			switch n.Type {
			case "DNAT":
				if i != 0 || n.From != original.Dst {
					t.Errorf("DNAT %d from %s, want first and from %s", i, n.From, original.Dst)
				}
				after.Dst = n.To
			case "SNAT":
				if n.From != original.Src {
					t.Errorf("SNAT from %s, want %s", n.From, original.Src)
				}
				after.Src = n.To
			default:
				t.Errorf("unknown NAT type %q", n.Type)
			}
		}
		if after.Src != reply.Dst || after.Dst != reply.Src {
			t.Errorf("original %v rewritten by %v is %v, want the reply %v turned around", original, nats, after, reply)
		}
		request, answer := Flows(original, reply)
		if request.Src != after.Src.Addr() || request.SrcPort != after.Src.Port() ||
			request.Dst != after.Dst.Addr() || request.Proto != original.Proto {
			t.Errorf("Flows() request %v, want %v", request, after)
		}
		if answer.Src != request.Dst || answer.Dst != request.Src {
			t.Errorf("Flows() reply %v does not answer %v", answer, request)
		}
		if original.Proto == trace.ICMP && (answer.SrcPort != request.SrcPort || answer.DstPort != 0) {
			t.Errorf("ICMP reply flow %v does not carry the echo id %d in SrcPort", answer, request.SrcPort)
		}
	})
}

// fuzzAddr makes an address of 4 or 16 bytes, or the zero Addr.
func fuzzAddr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}
