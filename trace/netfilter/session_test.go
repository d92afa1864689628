package netfilter

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

func TestSessionTag(t *testing.T) {
	s, err := newSession()
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != os.Getpid() || len(s.ID) != 8 || time.Since(s.Started) > 2*time.Second {
		t.Fatalf("new session %+v", s)
	}
	got, ok := parseTag(s.Tag())
	if !ok || got != s {
		t.Errorf("parseTag(%q) = %+v, %v; want %+v", s.Tag(), got, ok, s)
	}
	if !s.Alive() {
		t.Error("this process's session is not alive")
	}
	for _, bad := range []string{"", "nettrace:", "nettrace:0a1b2c3d:1700000000", "nettrace:0a1b2c3x:1700000000:1",
		"nettrace:0a1b2c3d:x:1", "nettrace:0a1b2c3d:1700000000:x", "other:0a1b2c3d:1700000000:1"} {
		if s, ok := parseTag(bad); ok {
			t.Errorf("parseTag(%q) = %+v", bad, s)
		}
	}
}

func TestSessionAlive(t *testing.T) {
	self := Session{ID: "0a1b2c3d", PID: os.Getpid(), Started: time.Now()}
	for _, tc := range []struct {
		name string
		s    Session
		want bool
	}{
		{"this process", self, true},
		{"no pid", Session{ID: "0a1b2c3d"}, false},
		{"exited process", Session{ID: "0a1b2c3d", PID: deadPID(t), Started: time.Now()}, false},
		// pid 1 started long before this session: not reused, alive.
		{"init", Session{ID: "0a1b2c3d", PID: 1, Started: time.Now()}, true},
		// A session older than the process with its pid: the pid was reused.
		{"reused pid", Session{ID: "0a1b2c3d", PID: os.Getpid(), Started: time.Unix(1, 0)}, false},
	} {
		if got := tc.s.Alive(); got != tc.want {
			t.Errorf("%s: Alive() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

var testSession = Session{ID: "0a1b2c3d", PID: 4242, Started: time.Unix(1700000000, 0)}

func TestLegacyArmScript(t *testing.T) {
	tcp := legacyArmScript(testSession, trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}, 100, 200)
	want := `*raw
:NETTRACE-0a1b2c3d - [0:0]
-I PREROUTING 1 -p tcp -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -j NETTRACE-0a1b2c3d
-I OUTPUT 1 -p tcp -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -j NETTRACE-0a1b2c3d
-A NETTRACE-0a1b2c3d -p tcp -m multiport ! --ports 40001 -j RETURN
-A NETTRACE-0a1b2c3d -p tcp -m multiport --ports 40001 -m limit --limit 100/second --limit-burst 200 -j TRACE
COMMIT
`
	if tcp != want {
		t.Errorf("TCP script:\n%s\nwant:\n%s", tcp, want)
	}
	icmp := legacyArmScript(testSession, trace.Match{Proto: trace.ICMP, Ports: []uint16{7}, Addrs: addrs("10.96.0.10", "172.16.1.5")}, 100, 200)
	for _, line := range []string{
		"-I PREROUTING 1 -p icmp -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -j NETTRACE-0a1b2c3d\n",
		`-A NETTRACE-0a1b2c3d -s 10.96.0.10/32 -p icmp -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -d 10.96.0.10/32 -p icmp -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -s 172.16.1.5/32 -p icmp -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -d 172.16.1.5/32 -p icmp -m limit --limit 100/second --limit-burst 200 -j TRACE
COMMIT
`,
	} {
		if !strings.Contains(icmp, line) {
			t.Errorf("ICMP script lacks %q:\n%s", line, icmp)
		}
	}
}

func TestLegacyWidenScript(t *testing.T) {
	var ports []uint16
	for p := range uint16(16) {
		ports = append(ports, 40001+p)
	}
	from := trace.Match{Proto: trace.UDP, Ports: ports[:1]}
	to := trace.Match{Proto: trace.UDP, Ports: ports,
		Ends: []netip.AddrPort{netip.MustParseAddrPort("172.16.2.7:8080"), netip.MustParseAddrPort("192.168.10.102:0")}}
	got := legacyWidenScript(testSession, from, to, 100, 200)
	// An end without a port leaves no skip rule: it goes.
	want := `*raw
-D NETTRACE-0a1b2c3d 1
-A NETTRACE-0a1b2c3d -p udp -m multiport --ports 40002,40003,40004,40005,40006,40007,40008,40009,40010,40011,40012,40013,40014,40015,40016 -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -s 172.16.2.7/32 -p udp -m udp --sport 8080 -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -d 172.16.2.7/32 -p udp -m udp --dport 8080 -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -s 192.168.10.102/32 -p udp -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -d 192.168.10.102/32 -p udp -m limit --limit 100/second --limit-burst 200 -j TRACE
COMMIT
`
	if got != want {
		t.Errorf("widen script:\n%s\nwant:\n%s", got, want)
	}
	// A new end's port joins the skip rule, which is replaced.
	withEnd := trace.Match{Proto: trace.UDP, Ports: ports[:1], Ends: []netip.AddrPort{netip.MustParseAddrPort("172.16.2.7:8080")}}
	got = legacyWidenScript(testSession, from, withEnd, 100, 200)
	want = `*raw
-R NETTRACE-0a1b2c3d 1 -p udp -m multiport ! --ports 8080,40001 -j RETURN
-A NETTRACE-0a1b2c3d -s 172.16.2.7/32 -p udp -m udp --sport 8080 -m limit --limit 100/second --limit-burst 200 -j TRACE
-A NETTRACE-0a1b2c3d -d 172.16.2.7/32 -p udp -m udp --dport 8080 -m limit --limit 100/second --limit-burst 200 -j TRACE
COMMIT
`
	if got != want {
		t.Errorf("widen script with an end:\n%s\nwant:\n%s", got, want)
	}
	// 16 ports take two negated multiport matches in the skip rule.
	got = legacyWidenScript(testSession, from, trace.Match{Proto: trace.UDP, Ports: ports}, 100, 200)
	skip := "-R NETTRACE-0a1b2c3d 1 -p udp -m multiport ! --ports 40001,40002,40003,40004,40005,40006,40007,40008,40009,40010,40011,40012,40013,40014,40015 -m multiport ! --ports 40016 -j RETURN\n"
	if !strings.Contains(got, skip) {
		t.Errorf("widen script to 16 ports:\n%s\nlacks %s", got, skip)
	}
	// 16 new ports take two multiport rules.
	if got := legacyTraceRules("C", trace.Match{Proto: trace.TCP, Ports: append(ports, 1)}, 1, 1); strings.Count(got, "-m multiport") != 2 {
		t.Errorf("17 ports:\n%s\nwant two multiport rules", got)
	}
}

// savedWithSessions is an iptables-legacy-save dump holding the rules of
// two sessions, an orphaned session chain, and rules of others.
const savedWithSessions = `*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:NETTRACE-0a1b2c3d - [0:0]
:NETTRACE-99999999 - [0:0]
:NETTRACE-deadbeef - [0:0]
-A PREROUTING -p udp -m multiport --ports 53 -m comment --comment nettrace:99999999:1700000100:77 -m limit --limit 100/sec --limit-burst 200 -j NETTRACE-99999999
-A PREROUTING -p tcp -m multiport --ports 40001 -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -m limit --limit 100/sec --limit-burst 200 -j NETTRACE-0a1b2c3d
-A PREROUTING -p udp -m udp --dport 6081 -m comment --comment "not nettrace:0a1b2c3d" -j NOTRACK
-A OUTPUT -p tcp -m multiport --ports 40001 -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -m limit --limit 100/sec --limit-burst 200 -j NETTRACE-0a1b2c3d
-A NETTRACE-0a1b2c3d -j TRACE
-A NETTRACE-99999999 -j TRACE
COMMIT
*filter
:INPUT ACCEPT [0:0]
COMMIT
`

func TestLegacySessions(t *testing.T) {
	save, err := ruleset.ParseSave(savedWithSessions)
	if err != nil {
		t.Fatal(err)
	}
	got := legacySessions(save)
	want := map[string]Session{
		"0a1b2c3d": testSession,
		"99999999": {ID: "99999999", PID: 77, Started: time.Unix(1700000100, 0)},
		"deadbeef": {ID: "deadbeef"},
	}
	if len(got) != len(want) {
		t.Fatalf("sessions %+v, want %+v", got, want)
	}
	for id, s := range want {
		if got[id] != s {
			t.Errorf("session %s = %+v, want %+v", id, got[id], s)
		}
	}

	script := legacyDisarmScript(save, map[string]bool{"0a1b2c3d": true, "deadbeef": true})
	wantScript := `*raw
-D PREROUTING -p tcp -m multiport --ports 40001 -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -m limit --limit 100/sec --limit-burst 200 -j NETTRACE-0a1b2c3d
-D OUTPUT -p tcp -m multiport --ports 40001 -m comment --comment nettrace:0a1b2c3d:1700000000:4242 -m limit --limit 100/sec --limit-burst 200 -j NETTRACE-0a1b2c3d
-F NETTRACE-0a1b2c3d
-X NETTRACE-0a1b2c3d
-F NETTRACE-deadbeef
-X NETTRACE-deadbeef
COMMIT
`
	if script != wantScript {
		t.Errorf("disarm script:\n%s\nwant:\n%s", script, wantScript)
	}
	if script := legacyDisarmScript(save, map[string]bool{"12345678": true}); script != "" {
		t.Errorf("disarm script for an absent session:\n%s", script)
	}
}

func TestLegacyHasRules(t *testing.T) {
	for _, tc := range []struct {
		dump string
		want bool
	}{
		{"", false},
		{"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n", false},
		// Only nettrace's own rules.
		{strings.Replace(savedWithSessions, "-A PREROUTING -p udp -m udp --dport 6081 -m comment --comment \"not nettrace:0a1b2c3d\" -j NOTRACK\n", "", 1), false},
		{savedWithSessions, true},
		{"*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", true},
		{"*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n", true},
	} {
		save, err := ruleset.ParseSave(tc.dump)
		if err != nil {
			t.Fatal(err)
		}
		if got := legacyHasRules(save); got != tc.want {
			t.Errorf("legacyHasRules(%q) = %v, want %v", tc.dump, got, tc.want)
		}
	}
}

func TestNftArmScript(t *testing.T) {
	got := nftArmScript(testSession, trace.Match{Proto: trace.UDP, Ports: []uint16{53}}, 100, 200)
	want := `table ip nettrace_0a1b2c3d {
	comment "nettrace:0a1b2c3d:1700000000:4242"
	set addrs {
		type ipv4_addr
	}
	set anyport {
		type inet_service
		elements = { 53 }
	}
	set ports {
		type inet_service
		elements = { 53 }
	}
	set ends {
		type ipv4_addr . inet_service
	}
	chain prerouting {
		type filter hook prerouting priority -350; policy accept;
		meta l4proto != udp accept
		meta l4proto udp th dport != @anyport th sport != @anyport accept
		meta l4proto udp th dport @ports limit rate 100/second burst 200 packets meta nftrace set 1
		meta l4proto udp th sport @ports limit rate 100/second burst 200 packets meta nftrace set 1
	}
	chain output {
		type filter hook output priority -350; policy accept;
		meta l4proto != udp accept
		meta l4proto udp th dport != @anyport th sport != @anyport accept
		meta l4proto udp th dport @ports limit rate 100/second burst 200 packets meta nftrace set 1
		meta l4proto udp th sport @ports limit rate 100/second burst 200 packets meta nftrace set 1
	}
}
`
	if got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
	icmp := nftArmScript(testSession, trace.Match{Proto: trace.ICMP, Addrs: addrs("10.96.0.10", "172.16.1.5")}, 100, 200)
	for _, line := range []string{
		"\tset addrs {\n\t\ttype ipv4_addr\n\t\telements = { 10.96.0.10, 172.16.1.5 }\n\t}\n",
		"\t\tmeta l4proto icmp ip saddr @addrs limit rate 100/second burst 200 packets meta nftrace set 1\n",
		"\t\tmeta l4proto icmp ip daddr @addrs limit rate 100/second burst 200 packets meta nftrace set 1\n",
	} {
		if !strings.Contains(icmp, line) {
			t.Errorf("ICMP script lacks %q:\n%s", line, icmp)
		}
	}
}

func TestNftWidenScript(t *testing.T) {
	from := trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}
	to := trace.Match{Proto: trace.TCP, Ports: []uint16{40001, 40002},
		Ends: []netip.AddrPort{netip.MustParseAddrPort("172.16.2.7:8080"), netip.MustParseAddrPort("192.168.10.102:61000")}}
	got := nftWidenScript(testSession, from, to, 100, 200)
	want := `add element ip nettrace_0a1b2c3d anyport { 8080, 40002, 61000 }
add element ip nettrace_0a1b2c3d ports { 40002 }
add element ip nettrace_0a1b2c3d ends { 172.16.2.7 . 8080, 192.168.10.102 . 61000 }
add rule ip nettrace_0a1b2c3d prerouting meta l4proto tcp ip daddr . th dport @ends limit rate 100/second burst 200 packets meta nftrace set 1
add rule ip nettrace_0a1b2c3d prerouting meta l4proto tcp ip saddr . th sport @ends limit rate 100/second burst 200 packets meta nftrace set 1
add rule ip nettrace_0a1b2c3d output meta l4proto tcp ip daddr . th dport @ends limit rate 100/second burst 200 packets meta nftrace set 1
add rule ip nettrace_0a1b2c3d output meta l4proto tcp ip saddr . th sport @ends limit rate 100/second burst 200 packets meta nftrace set 1
`
	if got != want {
		t.Errorf("widen script:\n%s\nwant:\n%s", got, want)
	}
	if got := nftWidenScript(testSession, to, to, 100, 200); got != "" {
		t.Errorf("widening to the same match:\n%s\nwant nothing", got)
	}

	// An end without a port selects by address, whatever the ports: its
	// rules go before the rule that skips the packets by their ports.
	byAddr := to
	byAddr.Ends = append(slices.Clone(to.Ends), netip.MustParseAddrPort("172.16.2.9:0"))
	got = nftWidenScript(testSession, to, byAddr, 100, 200)
	want = `add element ip nettrace_0a1b2c3d addrs { 172.16.2.9 }
insert rule ip nettrace_0a1b2c3d prerouting meta l4proto tcp ip daddr @addrs limit rate 100/second burst 200 packets meta nftrace set 1
insert rule ip nettrace_0a1b2c3d prerouting meta l4proto tcp ip saddr @addrs limit rate 100/second burst 200 packets meta nftrace set 1
insert rule ip nettrace_0a1b2c3d output meta l4proto tcp ip daddr @addrs limit rate 100/second burst 200 packets meta nftrace set 1
insert rule ip nettrace_0a1b2c3d output meta l4proto tcp ip saddr @addrs limit rate 100/second burst 200 packets meta nftrace set 1
`
	if got != want {
		t.Errorf("widen script with an address:\n%s\nwant:\n%s", got, want)
	}
}

func TestNftHasRules(t *testing.T) {
	for _, tc := range []struct {
		tables []nftTableRef
		want   bool
	}{
		{nil, false},
		{[]nftTableRef{{"ip", "nettrace_0a1b2c3d"}}, false},
		{[]nftTableRef{{"ip6", "filter"}, {"arp", "filter"}}, false},
		{[]nftTableRef{{"ip", "nettrace_0a1b2c3d"}, {"inet", "kube-proxy"}}, true},
		{[]nftTableRef{{"ip", "filter"}}, true},
	} {
		if got := nftHasRules(tc.tables); got != tc.want {
			t.Errorf("nftHasRules(%v) = %v, want %v", tc.tables, got, tc.want)
		}
	}
}

func TestMatches(t *testing.T) {
	tcp := trace.Match{Proto: trace.TCP, Ports: []uint16{40001}}
	widened := trace.Match{Proto: trace.TCP, Ports: []uint16{40001}, Ends: []netip.AddrPort{netip.MustParseAddrPort("192.168.10.101:61000")}}
	icmp := trace.Match{Proto: trace.ICMP, Addrs: addrs("10.96.0.10")}
	a, b, n := addrs("10.1.0.2")[0], addrs("10.96.0.10")[0], addrs("192.168.10.101")[0]
	for _, tc := range []struct {
		m    trace.Match
		p    trace.Packet
		want bool
	}{
		{tcp, trace.Packet{Proto: trace.TCP, Src: a, SrcPort: 40001, Dst: b, DstPort: 80}, true},
		{tcp, trace.Packet{Proto: trace.TCP, Src: b, SrcPort: 80, Dst: a, DstPort: 40001}, true},
		{tcp, trace.Packet{Proto: trace.UDP, Src: a, SrcPort: 40001, Dst: b, DstPort: 80}, false},
		{tcp, trace.Packet{Proto: trace.TCP, Src: a, SrcPort: 40002, Dst: b, DstPort: 80}, false},
		{tcp, trace.Packet{Proto: trace.TCP, Src: b, SrcPort: 80, Dst: n, DstPort: 61000}, false},
		{widened, trace.Packet{Proto: trace.TCP, Src: b, SrcPort: 80, Dst: n, DstPort: 61000}, true},
		{widened, trace.Packet{Proto: trace.TCP, Src: b, SrcPort: 80, Dst: n, DstPort: 61001}, false},
		{icmp, trace.Packet{Proto: trace.ICMP, Src: a, Dst: b}, true},
		{icmp, trace.Packet{Proto: trace.ICMP, Src: b, Dst: a}, true},
		{icmp, trace.Packet{Proto: trace.ICMP, Src: a, Dst: a}, false},
	} {
		if got := matches(tc.m, &tc.p); got != tc.want {
			t.Errorf("matches(%+v, %+v) = %v, want %v", tc.m, tc.p, got, tc.want)
		}
	}
}
