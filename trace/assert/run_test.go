package assert

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
)

const threeCases = `cases:
  - name: holds
    source: client
    target: svc/nginx-test
    expect:
      verdict: replied
      tunnel: ipip
  - name: breaks
    source: client
    target: svc/nginx-test
    expect:
      verdict: replied
      hits:
        - {chain: KUBE-SVC-W67AXLFK7VEUVN6G}
  - name: cannot run
    source: client
    target: svc/nowhere
    expect:
      verdict: replied
`

// runThree runs threeCases: the first two trace to the fixtures, the third
// cannot run.
func runThree(t *testing.T) (*File, []Result) {
	t.Helper()
	f, err := Parse("paths.yaml", []byte(threeCases))
	if err != nil {
		t.Fatal(err)
	}
	tracer := func(_ context.Context, c Case) (*trace.Path, error) {
		switch c.Name {
		case "holds":
			p := fixture(t, "clusterip-across-nodes")
			return &p, nil
		case "breaks":
			p := fixture(t, "reject-no-endpoints")
			return &p, nil
		}
		return nil, errors.New(`service "nowhere" not found in namespace "default"`)
	}
	return f, Run(context.Background(), f, tracer, fakeCluster{})
}

func TestRunAndReport(t *testing.T) {
	f, results := runThree(t)
	if len(results) != 3 || !results[0].Passed() || results[1].Passed() || results[2].Err == nil {
		t.Fatalf("results %+v, want pass, fail, error", results)
	}
	if n := len(results[1].Failures); n != 2 {
		t.Fatalf("%d failures of the broken case, want the verdict and the chain", n)
	}
	var out bytes.Buffer
	if err := WriteReport(&out, f, results); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	for _, want := range []string{
		"--- PASS: holds (paths.yaml:2, ",
		"--- FAIL: breaks (paths.yaml:8, ",
		"    paths.yaml:12: cases[1].expect.verdict:\n" +
			"        expected: replied\n" +
			"        observed: dropped at [k8s-w1] filter KUBE-SERVICES #3 REJECT: default/nginx-test:80 has no endpoints\n",
		"    paths.yaml:14: cases[1].expect.hits[0]:\n" +
			"        expected: a hop of chain KUBE-SVC-W67AXLFK7VEUVN6G\n" +
			"        observed: no rule hop matches; the path went through [k8s-w1] nat PREROUTING, KUBE-SERVICES; [k8s-w1] filter FORWARD, KUBE-FORWARD, KUBE-SERVICES\n",
		"    observed path:\n      [k8s-w1] default/client eth0 → tcp 172.16.158.16:40010 > 10.104.209.155:80 S ttl 64\n",
		"      verdict: dropped at [k8s-w1] filter KUBE-SERVICES #3 REJECT: default/nginx-test:80 has no endpoints\n",
		"--- ERROR: cannot run (paths.yaml:15, ",
		`    service "nowhere" not found in namespace "default"`,
		"1 passed, 1 failed, 1 could not run, of 3 cases in paths.yaml\n",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report misses\n%s\nin\n%s", want, report)
		}
	}
	if strings.Contains(report, "[k8s-w2]") {
		t.Errorf("the report draws the path of the case that passed:\n%s", report)
	}
}

func TestRunStopsWhenInterrupted(t *testing.T) {
	f, err := Parse("paths.yaml", []byte(threeCases))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	traced := 0
	results := Run(ctx, f, func(ctx context.Context, c Case) (*trace.Path, error) {
		traced++
		cancel()
		return nil, ctx.Err()
	}, fakeCluster{})
	if traced != 1 || len(results) != 1 {
		t.Errorf("traced %d cases, %d results, want to stop after the first", traced, len(results))
	}
}

func TestJUnit(t *testing.T) {
	f, results := runThree(t)
	results[0].Duration = 1234 * time.Millisecond
	var out bytes.Buffer
	if err := WriteJUnit(&out, f, results); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), xml.Header) {
		t.Errorf("no XML header:\n%s", out.String())
	}
	// Decode it as a CI system would, into its own types.
	var doc struct {
		XMLName  xml.Name `xml:"testsuites"`
		Tests    int      `xml:"tests,attr"`
		Failures int      `xml:"failures,attr"`
		Errors   int      `xml:"errors,attr"`
		Time     string   `xml:"time,attr"`
		Suites   []struct {
			Name      string `xml:"name,attr"`
			Tests     int    `xml:"tests,attr"`
			Failures  int    `xml:"failures,attr"`
			Errors    int    `xml:"errors,attr"`
			Time      string `xml:"time,attr"`
			Timestamp string `xml:"timestamp,attr"`
			Cases     []struct {
				Name    string `xml:"name,attr"`
				Time    string `xml:"time,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
				Error *struct {
					Message string `xml:"message,attr"`
				} `xml:"error"`
				SystemOut string `xml:"system-out"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("the JUnit XML does not parse: %v\n%s", err, out.String())
	}
	if doc.Tests != 3 || doc.Failures != 1 || doc.Errors != 1 || len(doc.Suites) != 1 {
		t.Fatalf("testsuites: %d tests, %d failures, %d errors, %d suites; want 3, 1, 1, 1", doc.Tests, doc.Failures, doc.Errors, len(doc.Suites))
	}
	s := doc.Suites[0]
	if s.Name != "paths.yaml" || s.Tests != 3 || s.Failures != 1 || s.Errors != 1 || len(s.Cases) != 3 {
		t.Fatalf("testsuite %+v", s)
	}
	if _, err := time.Parse(time.RFC3339, s.Timestamp); err != nil {
		t.Errorf("timestamp %q: %v", s.Timestamp, err)
	}
	for _, tm := range []string{doc.Time, s.Time, s.Cases[1].Time} {
		if v, err := strconv.ParseFloat(tm, 64); err != nil || v < 0 {
			t.Errorf("time %q is not seconds", tm)
		}
	}
	if s.Cases[0].Name != "holds" || s.Cases[0].Time != "1.234" || s.Cases[0].Failure != nil || s.Cases[0].Error != nil {
		t.Errorf("the passing case: %+v", s.Cases[0])
	}
	broken := s.Cases[1]
	if broken.Failure == nil || !strings.HasPrefix(broken.Failure.Message, "2 expectations failed, first cases[1].expect.verdict: expected replied, observed dropped") ||
		!strings.Contains(broken.Failure.Text, "paths.yaml:14: cases[1].expect.hits[0]:") ||
		!strings.Contains(broken.SystemOut, "verdict: dropped at [k8s-w1]") {
		t.Errorf("the failing case: %+v", broken)
	}
	if e := s.Cases[2].Error; e == nil || !strings.Contains(e.Message, `service "nowhere" not found`) {
		t.Errorf("the case that could not run: %+v", s.Cases[2])
	}
}
