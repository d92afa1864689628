package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// ruleHops returns n rule hops of about 400 bytes of JSON each.
func ruleHops(n int) []trace.Hop {
	hops := make([]trace.Hop, n)
	for i := range hops {
		hops[i] = trace.Hop{
			Time: time.Unix(1700000000, int64(i)), Node: "k8s-w1", Kind: trace.HopRule, Source: "nflog",
			Packet: &trace.Packet{Proto: trace.TCP, Src: netip.MustParseAddr("172.16.198.1"), SrcPort: 40001,
				Dst: netip.MustParseAddr("10.111.34.193"), DstPort: 80},
			Rule: &trace.Rule{Backend: "legacy", Family: "ip", Table: "nat", Chain: "KUBE-SERVICES", Number: i, Type: "rule",
				Text: fmt.Sprintf("-A KUBE-SERVICES -d 10.111.34.193/32 -p tcp -m comment --comment \"rule %d\" -j KUBE-SVC-X", i)},
		}
	}
	return hops
}

func TestFitKeepsAnEntryThatFits(t *testing.T) {
	e := NodeStatus{Node: "k8s-w1", Armed: true, Done: true, Hops: ruleHops(10), Pcap: []byte("pcap")}
	e.Fit(NodeBudget(3))
	if len(e.Hops) != 10 || string(e.Pcap) != "pcap" || len(e.Losses) != 0 {
		t.Fatalf("an entry within its budget was trimmed: %d hops, pcap %q, losses %v", len(e.Hops), e.Pcap, e.Losses)
	}
}

func TestFitLeavesOutThePcapFirst(t *testing.T) {
	e := NodeStatus{Node: "k8s-w1", Done: true, Hops: ruleHops(10), Pcap: make([]byte, 64<<10)}
	e.Fit(32 << 10)
	if e.Pcap != nil || len(e.Hops) != 10 {
		t.Fatalf("got %d bytes of pcap and %d hops, want the pcap left out and every hop", len(e.Pcap), len(e.Hops))
	}
	if len(e.Losses) != 1 || e.Losses[0].Source != StatusSource || !strings.Contains(e.Losses[0].Detail, "pcap of 65536 bytes") {
		t.Fatalf("losses %+v, want one saying the pcap was left out", e.Losses)
	}
}

func TestFitTrimsTheLastHops(t *testing.T) {
	hops := ruleHops(5000)
	e := NodeStatus{Node: "k8s-w1", Armed: true, Done: true, Hops: hops, Pcap: make([]byte, 1000)}
	budget := NodeBudget(2)
	e.Fit(budget)
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > budget {
		t.Fatalf("the entry takes %d bytes, over its budget of %d", len(b), budget)
	}
	if len(e.Hops) == 0 || len(e.Hops) == len(hops) || e.Hops[len(e.Hops)-1].Rule.Number != len(e.Hops)-1 {
		t.Fatalf("kept %d hops, want the first ones in order", len(e.Hops))
	}
	if len(b) < budget*9/10 {
		t.Errorf("the entry takes %d bytes of its budget of %d: too much was left out", len(b), budget)
	}
	last := e.Losses[len(e.Losses)-1]
	want := fmt.Sprintf("the last %d of 5000 hops were left out", 5000-len(e.Hops))
	if last.Count != 5000-len(e.Hops) || !strings.Contains(last.Detail, want) {
		t.Fatalf("loss %+v, want %q", last, want)
	}
}
