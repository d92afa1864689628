package correlate

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestCorrelateGolden correlates every fixture and compares the path, as
// JSON, with testdata/<fixture>.json. Those files are also the paths that
// trace/render's tests draw.
func TestCorrelateGolden(t *testing.T) {
	for _, s := range scenarios() {
		t.Run(s.name, func(t *testing.T) {
			got, err := json.MarshalIndent(Correlate(s.in), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			file := filepath.Join("testdata", s.name+".json")
			if *update {
				if err := os.WriteFile(file, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test -update to write it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("path differs from %s (go test -update rewrites it):\n%s", file, describe(Correlate(s.in)))
			}
		})
	}
}

// describe writes a path one hop a line, for failure messages and for the
// tests that check the order.
func describe(p trace.Path) string {
	var b strings.Builder
	for _, h := range p.Hops {
		fmt.Fprintln(&b, line(h))
	}
	fmt.Fprintf(&b, "verdict %s node=%q where=%q reason=%q\n", p.Verdict.Result, p.Verdict.Node, p.Verdict.Where, p.Verdict.Reason)
	return b.String()
}

// line is one hop in a few words: direction, node, kind and where.
func line(h trace.Hop) string {
	what := h.Iface
	switch {
	case h.Rule != nil:
		what = placeOf(h)
	case h.NAT != nil:
		what = fmt.Sprintf("%s %s>%s by %s", h.NAT.Type, h.NAT.From, h.NAT.To, h.NAT.ByChain)
	case h.Route != nil:
		what = h.Route.Text
	case h.ARP != nil:
		what = fmt.Sprintf("%s %s %s>%s", h.Iface, h.ARP.Op, h.ARP.SenderIP, h.ARP.TargetIP)
	}
	if h.Netns != "" {
		what = h.Netns + " " + what
	}
	s := fmt.Sprintf("%s %s %s %s", h.Direction, h.Node, h.Kind, what)
	if h.Note != "" {
		s += " (" + h.Note + ")"
	}
	return s
}
