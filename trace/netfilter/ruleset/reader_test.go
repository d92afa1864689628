package ruleset

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeNode serves rulesets to a Reader as the commands would print them and
// counts the reads.
type fakeNode struct {
	legacy, nftSave, nftList string
	reads                    int
}

func (f *fakeNode) run(name string, args ...string) ([]byte, error) {
	switch name {
	case "iptables-legacy-save":
		f.reads++
		return []byte(f.legacy), nil
	case "iptables-nft-save":
		return []byte(f.nftSave), nil
	case "nft":
		f.reads++
		return []byte(f.nftList), nil
	}
	return nil, fmt.Errorf("unexpected command %s %v", name, args)
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReaderLegacy(t *testing.T) {
	node := &fakeNode{legacy: mustRead(t, "testdata/kube-proxy.save") +
		"*raw\n:PREROUTING ACCEPT [0:0]\n:CALI-X - [0:0]\n-A CALI-X -j ACCEPT\nCOMMIT\n"}
	r := NewReader(node.run, true, false)
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		table, chain, typ string
		number            int
		want              LegacyHit
	}{
		{"filter", "FORWARD", "rule", 2, LegacyHit{Type: "rule", Text: "-A FORWARD -p tcp -m tcp --dport 9 -j DROP", Verdict: "drop"}},
		{"filter", "FORWARD", "policy", 5, LegacyHit{Type: "policy", Text: ":FORWARD DROP", Verdict: "drop"}},
		{"filter", "KUBE-FORWARD", "return", 4, LegacyHit{Type: "return", Verdict: "return"}},
		{"nat", "KUBE-SVC-XXXX", "rule", 3, LegacyHit{Type: "rule", Text: `-A KUBE-SVC-XXXX -m comment --comment "default/web -> 10.2.0.3:8080" -j KUBE-SEP-BBBB`, Verdict: "jump KUBE-SEP-BBBB"}},
		// ip_tables calls an unconditional rule with a built-in verdict a
		// return; it is the rule.
		{"raw", "CALI-X", "return", 1, LegacyHit{Type: "rule", Text: "-A CALI-X -j ACCEPT", Verdict: "accept"}},
	} {
		got, ok := r.Legacy(tc.table, tc.chain, tc.typ, tc.number)
		if !ok || got != tc.want {
			t.Errorf("Legacy(%s, %s, %s, %d) = %+v, %v; want %+v", tc.table, tc.chain, tc.typ, tc.number, got, ok, tc.want)
		}
	}
}

func TestReaderLegacyRereadsOnMiss(t *testing.T) {
	node := &fakeNode{legacy: "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\nCOMMIT\n"}
	r := NewReader(node.run, true, false)
	r.MinReread = time.Hour
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	node.legacy = "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-NEW - [0:0]\n-A FORWARD -j KUBE-NEW\n-A FORWARD -j ACCEPT\nCOMMIT\n"
	if _, ok := r.Legacy("filter", "KUBE-NEW", "return", 1); ok {
		t.Fatal("found a chain read less than MinReread ago")
	}
	if node.reads != 1 {
		t.Fatalf("%d reads, want 1: a miss within MinReread must not read again", node.reads)
	}
	r.MinReread = 0
	hit, ok := r.Legacy("filter", "KUBE-NEW", "return", 1)
	if !ok || hit.Type != "return" || node.reads != 2 {
		t.Fatalf("Legacy after the rewrite = %+v, %v with %d reads; want the new chain's return after a second read", hit, ok, node.reads)
	}
	if hit, _ := r.Legacy("filter", "FORWARD", "rule", 2); hit.Text != "-A FORWARD -j ACCEPT" {
		t.Errorf("rule 2 after the rewrite = %q", hit.Text)
	}
	if _, ok := r.Legacy("filter", "FORWARD", "rule", 9); ok {
		t.Error("rule 9 of a chain of 2 was found")
	}
}

func TestReaderNft(t *testing.T) {
	node := &fakeNode{nftList: mustRead(t, "testdata/kube-proxy.nft"), nftSave: mustRead(t, "testdata/kube-proxy.save")}
	r := NewReader(node.run, false, true)
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		family, table, chain string
		handle               uint64
		want                 NftHit
	}{
		// iptables-nft tables: the n-th rule as iptables-nft-save prints it.
		{"ip", "filter", "FORWARD", 7, NftHit{Number: 3, Text: "-A FORWARD -p tcp -m tcp --dport 7 -j REJECT --reject-with tcp-reset"}},
		{"ip", "nat", "KUBE-SVC-XXXX", 24, NftHit{Number: 2, Text: `-A KUBE-SVC-XXXX -m comment --comment "default/web -> 10.2.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AAAA`}},
		// A native table: as nft prints it.
		{"inet", "kube-proxy", "services", 9, NftHit{Number: 1, Text: "ip daddr . meta l4proto . th dport vmap @service-ips"}},
	} {
		got, ok := r.Nft(tc.family, tc.table, tc.chain, tc.handle)
		if !ok || got != tc.want {
			t.Errorf("Nft(%s %s %s %d) = %+v, %v; want %+v", tc.family, tc.table, tc.chain, tc.handle, got, ok, tc.want)
		}
	}
	if !r.NftBaseChain("inet", "kube-proxy", "filter-forward") || r.NftBaseChain("inet", "kube-proxy", "services") {
		t.Error("NftBaseChain mistakes a base chain for a regular one")
	}
}

func TestReaderNftFallsBackToNftText(t *testing.T) {
	// The nat table of the save has more rules in KUBE-SVC-XXXX than the
	// listing: the positions cannot be trusted, nft's own text is used.
	save := strings.Replace(mustRead(t, "testdata/kube-proxy.save"),
		"-A KUBE-SVC-XXXX -m comment", "-A KUBE-SVC-XXXX -j MARK --set-mark 1\n-A KUBE-SVC-XXXX -m comment", 1)
	node := &fakeNode{nftList: mustRead(t, "testdata/kube-proxy.nft"), nftSave: save}
	r := NewReader(node.run, false, true)
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	got, ok := r.Nft("ip", "nat", "KUBE-SVC-XXXX", 25)
	if want := (NftHit{Number: 3, Text: "counter jump KUBE-SEP-BBBB"}); !ok || got != want {
		t.Errorf("Nft = %+v, %v; want %+v", got, ok, want)
	}
}
