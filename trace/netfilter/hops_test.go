package netfilter

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/nflogtrace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/nfttrace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// offlineTracer is a Tracer fed events by hand, with rulesets served from
// strings.
func offlineTracer(t *testing.T, legacySave, nftList string) (*Tracer, *collector) {
	t.Helper()
	run := func(name string, args ...string) ([]byte, error) {
		switch name {
		case "iptables-legacy-save":
			return []byte(legacySave), nil
		case "iptables-nft-save":
			return nil, nil
		case "nft":
			return []byte(nftList), nil
		}
		return nil, fmt.Errorf("unexpected %s", name)
	}
	var c collector
	tr := &Tracer{
		opts:  Options{Node: "n1", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}},
		rules: ruleset.NewReader(run, legacySave != "", nftList != ""),
		links: &linkNames{names: map[uint32]string{}},
		emit:  c.emit,
	}
	tr.match.Store(&tr.opts.Match)
	if err := tr.rules.Refresh(); err != nil {
		t.Fatal(err)
	}
	return tr, &c
}

var (
	client  = netip.MustParseAddr("10.1.0.2")
	service = netip.MustParseAddr("10.96.0.100")
	synPkt  = &trace.Packet{Proto: trace.TCP, Src: client, SrcPort: 40001, Dst: service, DstPort: 80, TCPFlags: "S"}
)

const kpList = `table inet kp { # handle 1
	chain prerouting { # handle 1
		type nat hook prerouting priority dstnat; policy accept;
		jump services # handle 3
	}
	chain services { # handle 2
		ip daddr 10.96.0.100 tcp dport 80 return # handle 4
		ip daddr 10.96.0.1 accept # handle 5
	}
}
`

func TestNftEventsToHops(t *testing.T) {
	tr, c := offlineTracer(t, "", kpList)
	for _, ev := range []nfttrace.Event{
		// nettrace's own table: skipped, but its headers are remembered.
		{ID: 7, Family: "ip", Table: "nettrace_0a1b2c3d", Chain: "set_nftrace", Handle: 8, Type: "rule", Verdict: "continue", Packet: synPkt},
		{ID: 7, Family: "inet", Table: "kp", Chain: "prerouting", Handle: 3, Type: "rule", Verdict: "jump services"},
		// An explicit return, as older kernels type it.
		{ID: 7, Family: "inet", Table: "kp", Chain: "services", Handle: 4, Type: "return", Verdict: "return"},
		// The end of a base chain: the policy event says it all.
		{ID: 7, Family: "inet", Table: "kp", Chain: "prerouting", Type: "rule", Verdict: "continue"},
		{ID: 7, Family: "inet", Table: "kp", Chain: "prerouting", Type: "policy", Verdict: "accept", Mark: 0x10},
		// A packet never seen: dropped.
		{ID: 8, Family: "inet", Table: "kp", Chain: "services", Handle: 5, Type: "rule", Verdict: "accept"},
		// Another flow's packet: dropped, and its id too.
		{ID: 9, Family: "inet", Table: "kp", Chain: "prerouting", Handle: 3, Type: "rule", Verdict: "jump services",
			Packet: &trace.Packet{Proto: trace.TCP, Src: client, SrcPort: 40002, Dst: service, DstPort: 80}},
		{ID: 9, Family: "inet", Table: "kp", Chain: "services", Type: "rule", Verdict: "continue"},
	} {
		tr.onNftEvent(ev)
	}
	want := []string{
		"kp prerouting rule #1 jump services | jump services",
		"kp services rule #1 return | ip daddr 10.96.0.100 tcp dport 80 return",
		"kp prerouting policy #0 accept | policy accept",
	}
	diffLines(t, "hops", hopLines(c.hops), want)
	if len(c.hops) == 3 {
		if h := c.hops[2]; h.Packet.Mark != 0x10 || h.Rule.Mark != 0x10 || h.Packet.SrcPort != 40001 || h.Note != "nft trace id 00000007" || h.Node != "n1" {
			t.Errorf("policy hop %+v with packet %+v", h, h.Packet)
		}
		if c.hops[0].Packet == c.hops[1].Packet {
			t.Error("hops share one Packet")
		}
	}
}

func TestLegacyEventsToHops(t *testing.T) {
	save := "*raw\n:PREROUTING ACCEPT [0:0]\n:NETTRACE-0a1b2c3d - [0:0]\n" +
		"-A PREROUTING -p tcp -m multiport --ports 40001 -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -m limit --limit 100/sec --limit-burst 200 -j NETTRACE-0a1b2c3d\n" +
		"-A NETTRACE-0a1b2c3d -j TRACE\nCOMMIT\n*filter\n:FORWARD DROP [0:0]\n-A FORWARD -p tcp -j ACCEPT\nCOMMIT\n"
	tr, c := offlineTracer(t, save, "")
	for _, ev := range []nflogtrace.Event{
		{Prefix: nflogtrace.Prefix{Table: "raw", Chain: "PREROUTING", Type: "rule", Number: 1}, Packet: synPkt},
		{Prefix: nflogtrace.Prefix{Table: "raw", Chain: "NETTRACE-0a1b2c3d", Type: "return", Number: 2}, Packet: synPkt},
		{Prefix: nflogtrace.Prefix{Table: "raw", Chain: "PREROUTING", Type: "policy", Number: 2}, Packet: synPkt},
		{Prefix: nflogtrace.Prefix{Table: "filter", Chain: "FORWARD", Type: "return", Number: 1}, Packet: synPkt},
		{Prefix: nflogtrace.Prefix{Table: "filter", Chain: "FORWARD", Type: "rule", Number: 7}, Packet: synPkt},
		{Prefix: nflogtrace.Prefix{Table: "filter", Chain: "FORWARD", Type: "rule", Number: 1},
			Packet: &trace.Packet{Proto: trace.UDP, Src: client, SrcPort: 40001, Dst: service, DstPort: 53}},
	} {
		tr.onLegacyEvent(ev)
	}
	want := []string{
		"raw PREROUTING policy #0 accept | :PREROUTING ACCEPT",
		"filter FORWARD rule #1 accept | -A FORWARD -p tcp -j ACCEPT",
		"filter FORWARD rule #7  | ",
	}
	diffLines(t, "hops", hopLines(c.hops), want)
	if len(c.hops) == 3 && c.hops[2].Note != "rule 7 of filter FORWARD is not in iptables-legacy-save" {
		t.Errorf("note of an unknown rule: %q", c.hops[2].Note)
	}
}
