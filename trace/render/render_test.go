package render

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fixtures are the paths that trace/correlate's golden test writes: the
// seed's scenarios, correlated.
func fixtures(t *testing.T) map[string]trace.Path {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "correlate", "testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in ../correlate/testdata: %v", err)
	}
	paths := map[string]trace.Path{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var p trace.Path
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		paths[strings.TrimSuffix(filepath.Base(f), ".json")] = p
	}
	return paths
}

func render(t *testing.T, p trace.Path, f Format, opts Options) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Render(&b, p, f, opts); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestGolden renders every fixture in every format and compares the
// result with testdata/<fixture>.<format>.
func TestGolden(t *testing.T) {
	ext := map[Format]string{Table: "txt", Wide: "wide.txt", YAML: "yaml", Mermaid: "mmd", HTML: "html"}
	for name, p := range fixtures(t) {
		for f, e := range ext {
			t.Run(name+"."+e, func(t *testing.T) {
				got := render(t, p, f, Options{})
				file := filepath.Join("testdata", name+"."+e)
				if *update {
					if err := os.WriteFile(file, got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(file)
				if err != nil {
					t.Fatalf("%v (go test -update writes it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs (go test -update rewrites it); got:\n%s", file, got)
				}
			})
		}
	}
}

// TestJSONIsThePath checks that the json format is the path as it is: the
// fixture files are trace/correlate's json of the same paths.
func TestJSONIsThePath(t *testing.T) {
	for name, p := range fixtures(t) {
		want, err := os.ReadFile(filepath.Join("..", "correlate", "testdata", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if got := render(t, p, JSON, Options{}); !bytes.Equal(got, want) {
			t.Errorf("%s: json output differs from the path\n%s", name, got)
		}
	}
}

func TestTableLines(t *testing.T) {
	paths := fixtures(t)
	for _, tt := range []struct {
		fixture string
		want    []string
	}{
		{"clusterip-across-nodes", []string{
			`[k8s-w1] nat PREROUTING #1 "kubernetes service portals" → KUBE-SERVICES #3 "default/nginx-test cluster IP" → ` +
				`KUBE-SVC-2VLBFIULZRMG6NS3 #3 "default/nginx-test -> 172.16.184.2:80" (p=0.5) → ` +
				`KUBE-SEP-TOJ6KBVFMXNEZ7KU #2 "default/nginx-test" DNAT 10.104.209.155:80 → 172.16.184.2:80`,
			"[k8s-w1] route 172.16.184.0/24 via 192.168.10.102 dev tunl0 onlink (lookup)",
			"[k8s-w1] tunl0 IPIP 192.168.10.101 → 192.168.10.102 (sent wrapped on eth0)",
			"[k8s-w2] default/nginx-test-6d4cf56db6-2x8kq eth0 → delivered",
			"reply",
			"verdict: replied: SYN-ACK",
		}},
		{"same-node-proxy-arp", []string{
			"[k8s-w1] default/client eth0 → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)",
		}},
		{"nodeport-via-other-node", []string{
			`[k8s-w1] nat POSTROUTING #1 "kubernetes postrouting rules" → KUBE-POSTROUTING #2 MARK → ` +
				`KUBE-POSTROUTING #3 "kubernetes service traffic requiring SNAT" MASQUERADE 192.168.10.200:40001 → 172.16.158.0:61234`,
			"[outside] eth0 → tcp 192.168.10.101:31010 > 192.168.10.200:40001 S. ttl 62",
		}},
		{"reject-no-endpoints", []string{
			"verdict: dropped at [k8s-w1] filter KUBE-SERVICES #3 REJECT: default/nginx-test:80 has no endpoints",
		}},
		{"forward-policy-drop", []string{
			"[k8s-w1] calia7a3e029a7b → tcp 172.16.158.16:40020 > 172.16.158.15:80 S ttl 64 (+1 retransmission)",
			"[k8s-w1] filter FORWARD policy DROP",
		}},
		{"lost-on-the-way", []string{
			"lost: 37 events of capture on k8s-w2: eth0: 37 packets dropped by the kernel, capture ring full",
		}},
	} {
		got := strings.Split(string(render(t, paths[tt.fixture], Table, Options{})), "\n")
		for _, w := range tt.want {
			found := false
			for _, l := range got {
				found = found || l == w
			}
			if !found {
				t.Errorf("%s: no line\n%s\nin\n%s", tt.fixture, w, strings.Join(got, "\n"))
			}
		}
		if last := got[len(got)-2]; !strings.HasPrefix(last, "verdict: ") {
			t.Errorf("%s: last line %q, want the verdict", tt.fixture, last)
		}
	}
}

// TestTableLinesSayTheWay checks that a capture's way, when the capture
// told it, follows the interface.
func TestTableLinesSayTheWay(t *testing.T) {
	p := fixtures(t)["same-node-proxy-arp"]
	p.Hops = slices.Clone(p.Hops)
	for i, h := range p.Hops {
		if h.Kind == trace.HopARP && h.Netns == "default/client" && h.ARP.Op == "reply" {
			p.Hops[i].Way = trace.WayIn
		}
	}
	want := "[k8s-w1] default/client eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)"
	if got := string(render(t, p, Table, Options{})); !strings.Contains(got, want+"\n") {
		t.Errorf("no line\n%s\nin\n%s", want, got)
	}
}

var ansiCode = regexp.MustCompile("\x1b\\[[0-9;]*m")

func TestColor(t *testing.T) {
	for name, p := range fixtures(t) {
		for _, f := range []Format{Table, Wide} {
			plain := render(t, p, f, Options{})
			colored := render(t, p, f, Options{Color: true})
			if bytes.Contains(plain, []byte("\x1b[")) {
				t.Errorf("%s %s: escape codes without colour", name, f)
			}
			if !ansiCode.Match(colored) {
				t.Errorf("%s %s: no escape codes with colour", name, f)
			}
			if stripped := ansiCode.ReplaceAll(colored, nil); !bytes.Equal(stripped, plain) {
				t.Errorf("%s %s: colour changes the text:\n%s\nwant\n%s", name, f, stripped, plain)
			}
		}
	}
	reject := render(t, fixtures(t)["reject-no-endpoints"], Table, Options{Color: true})
	if !bytes.Contains(reject, []byte(ansi[styleDrop]+" REJECT"+ansiReset)) ||
		!bytes.Contains(reject, []byte(ansi[styleDrop]+"dropped"+ansiReset)) {
		t.Errorf("the REJECT and the verdict are not red:\n%q", reject)
	}
}

func TestWideColumns(t *testing.T) {
	out := string(render(t, fixtures(t)["pod-to-pod-ipip-skewed"], Wide, Options{}))
	for _, w := range []string{
		"+0.000ms    eth0",
		"lookup      calia7a3e029a7b→tunl0  fib",
		"calia7a3e029a7b→tunl0  nftrace    [k8s-w1] filter FORWARD #1 → cali-FORWARD #5 ACCEPT (nft trace id 5e2a91c0)",
		"correlate  [k8s-w2] tunl0 IPIP decap 192.168.10.101 → 192.168.10.102",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("no %q in\n%s", w, out)
		}
	}
}

func TestMermaid(t *testing.T) {
	out := string(render(t, fixtures(t)["clusterip-across-nodes"], Mermaid, Options{}))
	for _, w := range []string{
		"sequenceDiagram\n",
		"    participant p0 as default/client 172.16.158.16\n",
		"    participant p1 as k8s-w1\n",
		"    participant p2 as k8s-w2\n",
		"    participant p3 as default/nginx-test-6d4cf56db6-2x8kq 172.16.184.2\n",
		"    p0->>p1: calia7a3e029a7b → tcp 172.16.158.16:40001 #gt; 10.104.209.155:80 S ttl 64\n",
		"    p1->>p2: eth0 → ipip",
		"    Note over p0,p3: reply\n",
		"    p2-->>p1: eth0 → ipip",
		"    Note over p0,p3: verdict: replied: SYN-ACK\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("no %q in\n%s", w, out)
		}
	}
	// Mermaid ends a message at ";" and reads "#" as an entity.
	for _, l := range strings.Split(out, "\n") {
		if msg, ok := strings.CutPrefix(strings.TrimSpace(l), "p"); ok && strings.Contains(msg, ": ") {
			text := msg[strings.Index(msg, ": ")+2:]
			if strings.ContainsAny(regexp.MustCompile(`#[a-z0-9]+;`).ReplaceAllString(text, ""), "#;<>") {
				t.Errorf("unescaped message %q", text)
			}
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, f := range Formats {
		if got, err := ParseFormat(string(f)); err != nil || got != f {
			t.Errorf("ParseFormat(%q) = %q, %v", f, got, err)
		}
	}
	if _, err := ParseFormat("dot"); err == nil || !strings.Contains(err.Error(), "table, wide, json, yaml, mermaid, html") {
		t.Errorf("ParseFormat(dot) error %v, want the list of formats", err)
	}
	if err := Render(&bytes.Buffer{}, trace.Path{}, "dot", Options{}); err == nil {
		t.Error("Render accepted an unknown format")
	}
}
