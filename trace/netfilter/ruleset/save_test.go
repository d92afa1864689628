package ruleset

import (
	"os"
	"reflect"
	"testing"
)

func readSave(t *testing.T) *Save {
	t.Helper()
	dump, err := os.ReadFile("testdata/kube-proxy.save")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSave(string(dump))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseSave(t *testing.T) {
	s := readSave(t)
	if got := len(s.Tables); got != 2 {
		t.Fatalf("%d tables, want filter and nat", got)
	}
	fwd := s.Chain("filter", "FORWARD")
	if fwd == nil || fwd.Policy != "DROP" || len(fwd.Rules) != 4 {
		t.Fatalf("filter FORWARD = %+v, want policy DROP and 4 rules", fwd)
	}
	if want := `-A FORWARD -p tcp -m tcp --dport 9 -j DROP`; fwd.Rules[1] != want {
		t.Errorf("rule 2 = %q, want %q", fwd.Rules[1], want)
	}
	svc := s.Chain("nat", "KUBE-SVC-XXXX")
	if svc == nil || svc.Policy != "" || len(svc.Rules) != 3 {
		t.Fatalf("nat KUBE-SVC-XXXX = %+v, want a user chain with 3 rules", svc)
	}
	if got, want := s.Tables["nat"].ChainOrder[:4], []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}; !reflect.DeepEqual(got, want) {
		t.Errorf("nat chain order starts %v, want %v", got, want)
	}
	if s.Chain("nat", "NOPE") != nil || s.Chain("mangle", "PREROUTING") != nil {
		t.Error("missing chains should be nil")
	}
}

func TestParseSaveRejectsGarbage(t *testing.T) {
	for _, dump := range []string{
		"-A FORWARD -j ACCEPT\n",
		"*filter\n:FORWARD\nCOMMIT\n",
		"*filter\nhello\nCOMMIT\n",
	} {
		if _, err := ParseSave(dump); err == nil {
			t.Errorf("ParseSave(%q) succeeded", dump)
		}
	}
}

func TestParseSaveSkipsIncompatibleTable(t *testing.T) {
	s, err := ParseSave("# Table `filter' is incompatible, use 'nft' tool.\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Tables) != 0 {
		t.Errorf("tables %v from a comment", s.Tables)
	}
}

func TestSplitRuleAndComment(t *testing.T) {
	rule := `-A KUBE-SVC-XXXX -m comment --comment "default/web -> 10.2.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AAAA`
	words := SplitRule(rule)
	if len(words) != 14 || words[5] != "default/web -> 10.2.0.2:8080" || words[13] != "KUBE-SEP-AAAA" {
		t.Errorf("SplitRule = %q", words)
	}
	if got := Comment(rule); got != "default/web -> 10.2.0.2:8080" {
		t.Errorf("Comment = %q", got)
	}
	if got := Comment(`-A X -m comment --comment "say \"hi\"" -j ACCEPT`); got != `say "hi"` {
		t.Errorf("Comment with escaped quotes = %q", got)
	}
	if got := Comment(`-A PREROUTING -m comment --comment nettrace:0a1b2c3d:1:2 -j NETTRACE-0a1b2c3d`); got != "nettrace:0a1b2c3d:1:2" {
		t.Errorf("unquoted Comment = %q", got)
	}
	if got := Comment("-A X -j ACCEPT"); got != "" {
		t.Errorf("Comment of a rule without one = %q", got)
	}
}

func TestVerdict(t *testing.T) {
	s := readSave(t)
	nat, filter := s.Tables["nat"], s.Tables["filter"]
	for _, tc := range []struct {
		table *Table
		rule  string
		want  string
	}{
		{nat, `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`, "jump KUBE-SERVICES"},
		{nat, `-A KUBE-SEP-AAAA -p tcp -m tcp -j DNAT --to-destination 10.2.0.2:8080`, "accept"},
		{nat, `-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`, "continue"},
		{nat, `-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`, "return"},
		{nat, `-A X -g KUBE-SEP-AAAA`, "goto KUBE-SEP-AAAA"},
		{filter, `-A FORWARD -p tcp -m tcp --dport 9 -j DROP`, "drop"},
		{filter, `-A FORWARD -p tcp -m tcp --dport 7 -j REJECT --reject-with tcp-reset`, "drop"},
		{filter, `-A FORWARD -d 10.2.0.0/24 -j ACCEPT`, "accept"},
		{filter, `-A FORWARD -m comment --comment "-j DROP" -m conntrack --ctstate NEW`, "continue"},
		{filter, `-A FORWARD -j NFQUEUE --queue-num 3`, "queue"},
	} {
		if got := tc.table.Verdict(tc.rule); got != tc.want {
			t.Errorf("Verdict(%q) = %q, want %q", tc.rule, got, tc.want)
		}
	}
}
