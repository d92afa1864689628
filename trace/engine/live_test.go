package engine

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

var (
	clientIP  = netip.MustParseAddr("172.16.198.1")
	serviceIP = netip.MustParseAddr("10.96.143.238")
)

func TestStartsFlowTakesOnlyANewConnectionsFirstPacket(t *testing.T) {
	want := trace.Flow{Proto: trace.TCP, Src: clientIP, Dst: serviceIP, DstPort: 80}
	packet := func(flags string, sport uint16) trace.Hop {
		return trace.Hop{Time: time.Date(2026, 11, 26, 5, 0, 0, 1e6, time.UTC), Kind: trace.HopInterface,
			Packet: &trace.Packet{Proto: trace.TCP, Src: clientIP, SrcPort: sport, Dst: serviceIP, DstPort: 80, TCPFlags: flags}}
	}
	oldEntry := trace.Hop{Kind: trace.HopNAT, NAT: &trace.NAT{Type: "DNAT", Original: trace.Tuple{Proto: trace.TCP,
		Src: netip.AddrPortFrom(clientIP, 43075), Dst: netip.AddrPortFrom(serviceIP, 80)}}}
	armed := time.Date(2026, 11, 26, 5, 0, 0, 0, time.UTC)
	starts := StartsFlow(want, armed)
	early := packet("S", 44000)
	early.Time = armed.Add(-time.Millisecond)
	for name, c := range map[string]struct {
		hop  trace.Hop
		want bool
	}{
		"syn":                          {packet("S", 45000), true},
		"syn before every node armed":  {early, false},
		"ack of an earlier connection": {packet(".", 41000), false},
		"fin of an earlier connection": {packet("F.", 41000), false},
		"conntrack entry ending":       {oldEntry, false},
		"reply":                        {trace.Hop{Kind: trace.HopInterface, Packet: &trace.Packet{Proto: trace.TCP, Src: serviceIP, SrcPort: 80, Dst: clientIP, DstPort: 45000, TCPFlags: "S."}}, false},
	} {
		if got := starts(c.hop); got != c.want {
			t.Errorf("%s: StartsFlow = %t, want %t", name, got, c.want)
		}
	}
	if f := FlowOf(want, packet("S", 45000)); f.SrcPort != 45000 {
		t.Errorf("FlowOf = %s, want source port 45000", f)
	}
}
