//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// commandResult is how a command ended.
type commandResult struct {
	stdout, stderr string
	code           int
}

// runExit runs a command in the repository's root, where the example
// files' relative paths hold, and returns how it ended.
func runExit(t *testing.T, argv ...string) commandResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = repoRoot
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return commandResult{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
}

// junitReport is the part of a JUnit XML report that CI systems read.
type junitReport struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Suites   []struct {
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Time     string `xml:"time,attr"`
		Cases    []struct {
			Name    string `xml:"name,attr"`
			Time    string `xml:"time,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// readJUnit parses a JUnit report, failing the test when it is not valid.
func readJUnit(t *testing.T, path string) junitReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r junitReport
	if err := xml.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s is not valid JUnit XML: %v\n%s", path, err, b)
	}
	if len(r.Suites) != 1 {
		t.Fatalf("%s has %d test suites, want 1", path, len(r.Suites))
	}
	return r
}

func TestAssertExamplesHold(t *testing.T) {
	traceSetup(t)
	junit := filepath.Join(t.TempDir(), "junit.xml")
	r := runExit(t, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t),
		"assert", "-f", "docs/paths.yaml", "--junit", junit)
	t.Logf("kubectl nettrace assert -f docs/paths.yaml:\n%s%s", r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("exit %d, want 0: every example path holds", r.code)
	}
	report := readJUnit(t, junit)
	if report.Tests < 8 || report.Failures != 0 || report.Errors != 0 {
		t.Errorf("JUnit: %d tests, %d failures, %d errors; want every case of the file passed", report.Tests, report.Failures, report.Errors)
	}
}

// brokenPaths are cases about a test service that the test breaks. The
// first expects its own chain and endpoint, the second the ClusterIP
// chain of nginx-test (SVC_CHAIN), which its path does not go through.
const brokenPaths = `namespace: default
cases:
  - name: assert-e2e serves
    source: client
    target: svc/assert-e2e
    expect:
      verdict: replied
      nat:
        - type: DNAT
          to: {selector: app=assert-e2e, port: 80}
  - name: the chain of another service
    source: client
    target: svc/assert-e2e
    expect:
      hits:
        - {table: nat, chain: SVC_CHAIN}
`

func TestAssertBrokenPathsFail(t *testing.T) {
	traceSetup(t)
	// nginx-test's KUBE-SVC chain, as the path of a trace to it shows.
	var nginx trace.Path
	out := run(t, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t), "client", "svc/nginx-test", "-o", "json")
	if err := json.Unmarshal([]byte(out), &nginx); err != nil {
		t.Fatal(err)
	}
	otherChain := ""
	for _, h := range nginx.Hops {
		if h.Rule != nil && strings.HasPrefix(h.Rule.Chain, "KUBE-SVC-") {
			otherChain = h.Rule.Chain
		}
	}
	if otherChain == "" {
		t.Fatalf("the trace to svc/nginx-test went through no KUBE-SVC chain:\n%s", out)
	}

	kubectl(t, "create", "deployment", "assert-e2e", "--image=nginx", "--port=80")
	t.Cleanup(func() {
		kubectl(t, "delete", "deployment", "assert-e2e", "--ignore-not-found", "--wait=true")
		kubectl(t, "delete", "service", "assert-e2e", "--ignore-not-found")
	})
	kubectl(t, "expose", "deployment", "assert-e2e", "--port=80")
	waitPods(t, "app=assert-e2e", 1)
	waitEndpoints(t, "assert-e2e", 1)
	waitReplied(t, "svc/assert-e2e")

	paths := filepath.Join(t.TempDir(), "paths.yaml")
	if err := os.WriteFile(paths, []byte(strings.ReplaceAll(brokenPaths, "SVC_CHAIN", otherChain)), 0o644); err != nil {
		t.Fatal(err)
	}
	assertRun := func(junit string) commandResult {
		r := runExit(t, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t), "assert", "-f", paths, "--junit", junit)
		t.Logf("kubectl nettrace assert:\n%s%s", r.stdout, r.stderr)
		return r
	}

	// The chain: the first case holds, the second fails and says which
	// chains the path went through instead.
	junit := filepath.Join(t.TempDir(), "chain.xml")
	r := assertRun(junit)
	if r.code != 1 || !strings.Contains(r.stderr, "1 of 2 cases failed") {
		t.Fatalf("exit %d, want 1 with one case of two failed", r.code)
	}
	for _, want := range []string{
		"--- PASS: assert-e2e serves",
		"--- FAIL: the chain of another service",
		paths + ":16: cases[1].expect.hits[0]:\n",
		"expected: a hop of table nat, chain " + otherChain + "\n",
		"observed: no rule hop matches; the path went through [k8s-",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the report misses %q", want)
		}
	}
	// The client's veth is captured inbound only: the path starts with its
	// SYN coming in on the host's end.
	if first := regexp.MustCompile(`observed path:\n      \[k8s-w1\] cali[0-9a-f]{11} in → tcp [0-9.]+:\d+ > [0-9.]+:80 S ttl 64\n`); !first.MatchString(r.stdout) {
		t.Errorf("the observed path does not start with the SYN coming in on the client's veth:\n%s", r.stdout)
	}
	if report := readJUnit(t, junit); report.Tests != 2 || report.Failures != 1 || report.Suites[0].Cases[1].Failure == nil {
		t.Errorf("JUnit: %+v, want 2 tests, the second failed", report)
	}

	// No endpoint: the service's REJECT drops the request, and the first
	// case fails on its verdict and its DNAT.
	kubectl(t, "scale", "deployment/assert-e2e", "--replicas=0")
	waitPods(t, "app=assert-e2e", 0)
	waitEndpoints(t, "assert-e2e", 0)
	junit = filepath.Join(t.TempDir(), "endpoint.xml")
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 30*time.Second, true, func(context.Context) (bool, error) {
		// The service NAT rejects once it saw the endpoint go.
		r = assertRun(junit)
		return strings.Contains(r.stdout, "has no endpoints"), nil
	})
	if err != nil {
		t.Fatalf("the path never showed the rejection of the service without endpoints")
	}
	if r.code != 1 || !strings.Contains(r.stderr, "2 of 2 cases failed") {
		t.Fatalf("exit %d, want 1 with both cases failed", r.code)
	}
	for _, want := range []string{
		paths + ":7: cases[0].expect.verdict:\n        expected: replied\n        observed: dropped at [k8s-w1] filter KUBE-SERVICES",
		"default/assert-e2e",
		paths + ":9: cases[0].expect.nat[0]:\n        expected: DNAT to a pod that app=assert-e2e selects (it selects none in namespace default) port 80\n        observed: no NAT",
		"      verdict: dropped at [k8s-w1] filter KUBE-SERVICES",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the report misses %q", want)
		}
	}
	report := readJUnit(t, junit)
	if report.Tests != 2 || report.Failures != 2 {
		t.Fatalf("JUnit: %d tests, %d failures; want 2 and 2", report.Tests, report.Failures)
	}
	first := report.Suites[0].Cases[0]
	if first.Failure == nil || !strings.Contains(first.Failure.Message, "2 expectations failed, first cases[0].expect.verdict: expected replied, observed dropped") ||
		!strings.Contains(first.Failure.Text, "expected: DNAT to a pod that app=assert-e2e selects") {
		t.Errorf("JUnit case %+v, want the verdict and the DNAT failed", first)
	}
}

// waitReplied waits until a trace from the client to target is replied:
// the service NAT has caught up with a new service.
func waitReplied(t *testing.T, target string) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		r := runExit(t, bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t), "client", target, "-o", "json")
		var p trace.Path
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &p) != nil {
			last = r.stderr
			return false, nil
		}
		last = string(p.Verdict.Result) + ": " + p.Verdict.Reason
		return p.Verdict.Result == trace.Replied, nil
	})
	if err != nil {
		t.Fatalf("the trace to %s was never replied (last: %s)", target, last)
	}
}

// waitEndpoints waits until a service of the default namespace has n ready
// endpoints.
func waitEndpoints(t *testing.T, service string, n int) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		slices, err := clientset(t).DiscoveryV1().EndpointSlices("default").List(ctx,
			metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + service})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready == nil || *e.Conditions.Ready {
					ready++
				}
			}
		}
		return ready == n, nil
	})
	if err != nil {
		t.Fatalf("service %s did not get %d ready endpoints", service, n)
	}
}
