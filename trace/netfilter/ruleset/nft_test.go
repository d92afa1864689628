package ruleset

import (
	"os"
	"testing"
)

func readNft(t *testing.T) *Nft {
	t.Helper()
	listing, err := os.ReadFile("testdata/kube-proxy.nft")
	if err != nil {
		t.Fatal(err)
	}
	n, err := ParseNft(string(listing))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestParseNft(t *testing.T) {
	n := readNft(t)
	if len(n.Tables) != 4 {
		t.Fatalf("%d tables, want 4", len(n.Tables))
	}
	fwd := n.Table("ip", "filter").Chains["FORWARD"]
	if fwd.Hook != "forward" || fwd.Policy != "drop" || len(fwd.Rules) != 4 {
		t.Fatalf("ip filter FORWARD = %+v", fwd)
	}
	if r := fwd.Rules[0]; r.Handle != 5 || r.Text != "counter jump KUBE-FORWARD" {
		t.Errorf("first rule = %+v, want handle 5 with its text squeezed", r)
	}
	if got := fwd.Position(7); got != 3 {
		t.Errorf("Position(7) = %d, want 3", got)
	}
	if got := fwd.Position(99); got != 0 {
		t.Errorf("Position of a missing handle = %d, want 0", got)
	}
	svc := n.Table("ip", "nat").Chains["KUBE-SVC-XXXX"]
	if svc.Hook != "" || len(svc.Rules) != 3 || svc.Rules[0].Text != "meta l4proto tcp ip saddr != 172.16.0.0/16 ip daddr 10.96.0.100 tcp dport 80 counter jump KUBE-MARK-MASQ" {
		t.Errorf("ip nat KUBE-SVC-XXXX = %+v", svc)
	}
}

func TestParseNftSkipsSetsAndReadsRulesWithBraces(t *testing.T) {
	kp := readNft(t).Table("inet", "kube-proxy")
	if kp == nil || kp.Comment != "rules for kube-proxy" {
		t.Fatalf("inet kube-proxy = %+v", kp)
	}
	if got := len(kp.Chains); got != 3 {
		t.Errorf("%d chains, want 3: sets and maps are not chains", got)
	}
	services := kp.Chains["services"]
	if len(services.Rules) != 2 || services.Rules[1].Handle != 10 ||
		services.Rules[1].Text != `ip daddr @nodeport-ips meta l4proto . th dport vmap { tcp . 30080 : goto external-XXXX, udp . 30053 : goto external-YYYY } comment "node { port }"` {
		t.Errorf("services = %+v", services.Rules)
	}
	check := kp.Chains["filter-forward"]
	if len(check.Rules) != 1 || check.Rules[0].Handle != 12 {
		t.Errorf("a quoted \"# handle\" was taken for the handle: %+v", check.Rules)
	}
	if got := readNft(t).Table("ip", "nettrace_0a1b2c3d").Comment; got != "nettrace:0a1b2c3d:1700000000:4242" {
		t.Errorf("table comment = %q", got)
	}
}

func TestParseNftMultiLineRule(t *testing.T) {
	listing := "table ip t { # handle 1\n\tchain c { # handle 2\n\t\tip saddr { 1.2.3.4,\n\t\t\t5.6.7.8 } drop # handle 3\n\t}\n}\n"
	n, err := ParseNft(listing)
	if err != nil {
		t.Fatal(err)
	}
	rules := n.Table("ip", "t").Chains["c"].Rules
	if len(rules) != 1 || rules[0].Handle != 3 || rules[0].Text != "ip saddr { 1.2.3.4, 5.6.7.8 } drop" {
		t.Errorf("rules = %+v", rules)
	}
}

func TestParseNftRejectsUnbalanced(t *testing.T) {
	for _, listing := range []string{
		"table ip t {\n\tchain c {\n",
		"}\n",
		"chain c {\n}\n",
	} {
		if _, err := ParseNft(listing); err == nil {
			t.Errorf("ParseNft(%q) succeeded", listing)
		}
	}
}
