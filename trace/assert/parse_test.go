package assert

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

const validFile = `# the lab's paths
namespace: default
timeout: 4s
cases:
  - name: client to nginx-test
    source: client
    target: svc/nginx-test
    expect:
      verdict: replied
      nat:
        - type: DNAT
          to: {selector: app=nginx-test, port: 80}
      tunnel: ipip
      hits:
        - {table: nat, chain: KUBE-SVC-*}
        - {rule: "default/nginx-test"}
      misses:
        - {chain: KUBE-MARK-DROP, node: k8s-*}
  - source: pod/client
    target: pod/server
    proto: icmp
    timeout: 2s
    expect:
      nat: []
      tunnel: none
  - name: from outside
    source: ip/192.168.10.1
    target: node/k8s-w2:31010
    namespace: web
    live: true
    send: [curl, -s, "192.168.10.102:31010"]
    expect:
      verdict: dropped by KUBE-SERVICES
      nat:
        - {type: SNAT, to: {node: k8s-w2}}
        - {type: DNAT, to: {pod: web/nodeport-dnat}}
        - {type: DNAT, to: {ip: 172.16.198.6, port: 80}}
        - {type: SNAT}
`

func TestParseValidFile(t *testing.T) {
	f, err := Parse("paths.yaml", []byte(validFile))
	if err != nil {
		t.Fatal(err)
	}
	want := []Case{
		{
			Name: "client to nginx-test", Line: 5, Field: "cases[0]", Source: "client", Target: "svc/nginx-test",
			Namespace: "default", Timeout: 4 * time.Second,
			Expect: Expect{
				Verdict: &Verdict{Line: 9, Result: trace.Replied},
				NAT: []NAT{{Line: 11, Field: "cases[0].expect.nat[0]", Type: "DNAT",
					To: Address{Selector: "app=nginx-test", Port: 80}}},
				NATLine: 11, Tunnel: "ipip", TunnelLine: 13,
				Hits: []RuleMatch{
					{Line: 15, Field: "cases[0].expect.hits[0]", Table: "nat", Chain: "KUBE-SVC-*"},
					{Line: 16, Field: "cases[0].expect.hits[1]", Rule: "default/nginx-test"},
				},
				Misses: []RuleMatch{{Line: 18, Field: "cases[0].expect.misses[0]", Chain: "KUBE-MARK-DROP", Node: "k8s-*"}},
			},
		},
		{
			Name: "pod/client → pod/server", Line: 19, Field: "cases[1]", Source: "pod/client", Target: "pod/server",
			Namespace: "default", Proto: "icmp", Timeout: 2 * time.Second,
			Expect: Expect{NAT: []NAT{}, NATLine: 24, Tunnel: "none", TunnelLine: 25},
		},
		{
			Name: "from outside", Line: 26, Field: "cases[2]", Source: "ip/192.168.10.1", Target: "node/k8s-w2:31010",
			Namespace: "web", Live: true, Timeout: 4 * time.Second, Send: []string{"curl", "-s", "192.168.10.102:31010"},
			Expect: Expect{
				Verdict: &Verdict{Line: 33, Result: trace.Dropped, DroppedBy: "KUBE-SERVICES"},
				NATLine: 35,
				NAT: []NAT{
					{Line: 35, Field: "cases[2].expect.nat[0]", Type: "SNAT", To: Address{Node: "k8s-w2"}},
					{Line: 36, Field: "cases[2].expect.nat[1]", Type: "DNAT", To: Address{Pod: "web/nodeport-dnat"}},
					{Line: 37, Field: "cases[2].expect.nat[2]", Type: "DNAT", To: Address{IP: netip.MustParseAddr("172.16.198.6"), Port: 80}},
					{Line: 38, Field: "cases[2].expect.nat[3]", Type: "SNAT"},
				},
			},
		},
	}
	if f.Name != "paths.yaml" || len(f.Cases) != len(want) {
		t.Fatalf("got %d cases of %s, want %d", len(f.Cases), f.Name, len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(f.Cases[i], want[i]) {
			t.Errorf("case %d:\n got %+v\nwant %+v", i, f.Cases[i], want[i])
		}
	}
}

// TestParseErrors checks that every mistake is reported with its line and
// its place in the file.
func TestParseErrors(t *testing.T) {
	// caseWith is a file of one case whose expect block is expect (its
	// first line is line 6).
	caseWith := func(expect string) string {
		return "cases:\n  - source: client\n    target: svc/nginx-test\n    expect:\n      verdict: replied\n" + expect
	}
	for _, c := range []struct {
		name, file string
		want       []string
	}{
		{name: "empty", file: "", want: []string{"paths.yaml:1: no cases: the file is empty"}},
		{name: "syntax", file: "cases:\n  - source: client\n   target: x\n", want: []string{"paths.yaml:1: did not find expected '-' indicator"}},
		{name: "not a mapping", file: "- a\n- b\n", want: []string{"paths.yaml:1: want a mapping of namespace, timeout or cases, got a list"}},
		{name: "no cases", file: "namespace: default\n", want: []string{"paths.yaml:1: cases: missing: the file must list its cases"}},
		{name: "empty cases", file: "cases: []\n", want: []string{"paths.yaml:1: cases: no cases: the list is empty"}},
		{name: "unknown top field", file: "case: []\n", want: []string{
			"paths.yaml:1: case: unknown field: want namespace, timeout or cases",
			"paths.yaml:1: cases: missing: the file must list its cases",
		}},
		{
			name: "bad default timeout",
			file: "timeout: soon\ncases:\n  - {source: client, target: pod/x:80, expect: {verdict: replied}}\n",
			want: []string{`paths.yaml:1: timeout: want a positive duration such as 5s or 1m, got "soon"`},
		},
		{
			name: "bad type",
			file: caseWith("      nat:\n        - type: DANT\n"),
			want: []string{`paths.yaml:7: cases[0].expect.nat[0].type: want DNAT or SNAT, got "DANT"`},
		},
		{
			name: "missing type",
			file: caseWith("      nat:\n        - to: {pod: server}\n"),
			want: []string{"paths.yaml:7: cases[0].expect.nat[0].type: missing: want DNAT or SNAT"},
		},
		{
			name: "two addresses",
			file: caseWith("      nat:\n        - type: DNAT\n          to: {pod: server, ip: 10.0.0.1}\n"),
			want: []string{"paths.yaml:8: cases[0].expect.nat[0].to: want exactly one of selector, pod, ip or node, got 2"},
		},
		{
			name: "bad address",
			file: caseWith("      nat:\n        - type: DNAT\n          to: {ip: 10.0.0.300}\n"),
			want: []string{`paths.yaml:8: cases[0].expect.nat[0].to.ip: want an IPv4 address, got "10.0.0.300"`},
		},
		{
			name: "bad selector",
			file: caseWith("      nat:\n        - type: DNAT\n          to: {selector: \"app in (\"}\n"),
			want: []string{`paths.yaml:8: cases[0].expect.nat[0].to.selector: want a label selector such as app=nginx-test, got "app in ("`},
		},
		{
			name: "bad node",
			file: caseWith("      nat:\n        - type: SNAT\n          to: {node: K8S_W1}\n"),
			want: []string{`paths.yaml:8: cases[0].expect.nat[0].to.node: want a node's name, got "K8S_W1"`},
		},
		{
			name: "port as string",
			file: caseWith("      nat:\n        - type: DNAT\n          to: {ip: 10.0.0.1, port: \"80\"}\n"),
			want: []string{`paths.yaml:8: cases[0].expect.nat[0].to.port: want a port, 1-65535, got "80"`},
		},
		{
			name: "nat not a list",
			file: caseWith("      nat: DNAT\n"),
			want: []string{`paths.yaml:6: cases[0].expect.nat: want a list, got "DNAT"`},
		},
		{
			name: "unknown verdict",
			file: "cases:\n  - source: client\n    target: svc/nginx-test\n    expect:\n      verdict: accepted\n",
			want: []string{`paths.yaml:5: cases[0].expect.verdict: want delivered, replied, dropped or no-answer, or "dropped by" a chain, got "accepted"`},
		},
		{
			name: "bad dropped by",
			file: "cases:\n  - source: client\n    target: svc/nginx-test\n    expect:\n      verdict: dropped by KUBE-[\n",
			want: []string{`paths.yaml:5: cases[0].expect.verdict: "dropped by KUBE-[": want a glob after "dropped by", such as KUBE-SVC-*`},
		},
		{
			name: "bad tunnel",
			file: caseWith("      tunnel: gre\n"),
			want: []string{`paths.yaml:6: cases[0].expect.tunnel: want ipip, vxlan or none, got "gre"`},
		},
		{
			name: "empty hit",
			file: caseWith("      hits:\n        - {node: k8s-w1}\n"),
			want: []string{"paths.yaml:7: cases[0].expect.hits[0]: want at least one of table, chain or rule"},
		},
		{
			name: "bad glob",
			file: caseWith("      misses:\n        - {chain: \"KUBE-[\"}\n"),
			want: []string{`paths.yaml:7: cases[0].expect.misses[0].chain: want a glob such as KUBE-SVC-*, got "KUBE-["`},
		},
		{
			name: "unknown expect field",
			file: caseWith("      nats: []\n"),
			want: []string{"paths.yaml:6: cases[0].expect.nats: unknown field: want verdict, nat, tunnel, hits or misses"},
		},
		{
			name: "no expectations",
			file: "cases:\n  - source: client\n    target: svc/nginx-test\n    expect: {}\n",
			want: []string{"paths.yaml:4: cases[0].expect: no expectations: give at least one of verdict, nat, tunnel, hits or misses"},
		},
		{
			name: "missing fields",
			file: "cases:\n  - name: nothing\n",
			want: []string{
				"paths.yaml:2: cases[0].source: missing",
				"paths.yaml:2: cases[0].target: missing",
				"paths.yaml:2: cases[0].expect: missing",
			},
		},
		{
			name: "bad source and target",
			file: "cases:\n  - source: svc/web\n    target: web:99999\n    expect: {verdict: replied}\n",
			want: []string{
				`paths.yaml:2: cases[0].source: source "svc/web": a trace starts from a pod`,
				`paths.yaml:3: cases[0].target: target "web:99999": bad port "99999"`,
			},
		},
		{
			name: "wrong types",
			file: "cases:\n  - source: client\n    target: [svc]\n    live: yes please\n    port: 0\n    proto: sctp\n    timeout: -1s\n    expect: {verdict: replied}\n",
			want: []string{
				"paths.yaml:3: cases[0].target: want a string, got a list",
				`paths.yaml:4: cases[0].live: want true or false, got "yes please"`,
				`paths.yaml:5: cases[0].port: want a port, 1-65535, got "0"`,
				`paths.yaml:6: cases[0].proto: want tcp, udp or icmp, got "sctp"`,
				`paths.yaml:7: cases[0].timeout: want a positive duration such as 5s or 1m, got "-1s"`,
			},
		},
		{
			name: "outside without live",
			file: "cases:\n  - source: ip/192.168.10.1\n    target: node/k8s-w2:31010\n    expect: {verdict: replied}\n",
			want: []string{"paths.yaml:2: cases[0].source: 192.168.10.1 is outside the cluster, where no probe can be sent from: the case must be live"},
		},
		{
			name: "send without live",
			file: "cases:\n  - source: client\n    target: svc/nginx-test\n    send: [curl]\n    expect: {verdict: replied}\n",
			want: []string{"paths.yaml:4: cases[0].send: only a live case (live: true) sends its own traffic"},
		},
		{
			name: "twice",
			file: "cases:\n  - source: client\n    source: server\n    target: svc/nginx-test\n    expect: {verdict: replied}\n",
			want: []string{"paths.yaml:3: cases[0].source: given twice, first on line 2"},
		},
		{
			name: "same name",
			file: "cases:\n  - {name: a, source: client, target: pod/x:80, expect: {verdict: replied}}\n" +
				"  - {name: a, source: client, target: pod/y:80, expect: {verdict: replied}}\n",
			want: []string{`paths.yaml:3: cases[1].name: "a" names cases[0] too`},
		},
		{
			name: "bad namespace",
			file: "namespace: Web_1\ncases:\n  - {source: client, target: pod/x:80, expect: {verdict: replied}}\n",
			want: []string{`paths.yaml:1: namespace: "Web_1" is not a namespace name`},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse("paths.yaml", []byte(c.file))
			if err == nil {
				t.Fatalf("parsed %+v, want errors %q", f, c.want)
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(c.want) {
				t.Fatalf("errors:\n%s\nwant %d:\n%s", err, len(c.want), strings.Join(c.want, "\n"))
			}
			for i, w := range c.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("error %d:\n got %s\nwant %s…", i, got[i], w)
				}
			}
			var pe *Error
			if !errors.As(err, &pe) && c.name != "unknown" {
				t.Errorf("%v is not an *assert.Error", err)
			}
		})
	}
}
