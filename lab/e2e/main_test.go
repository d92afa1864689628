//go:build e2e

// Package e2e holds the end-to-end tests: they share one lab, brought up by
// TestMain with the seed's examples and removed at the end, after which the
// machine must look as it did before (netns, links, iptables on both
// backends, nftables, processes), even though a node runtime was killed with
// SIGKILL just before `down`.
//
// NETTRACE_E2E_REUSE=1 runs the tests against a lab that is already up and
// leaves it up; that is for iterating by hand, and skips the teardown check.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/lab"
	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// repoRoot is the repository, found from this file.
var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}()

// bin returns the path of a project binary built by `make build`.
func bin(name string) string { return filepath.Join(repoRoot, "bin", name) }

// upDuration is how long `up --with-examples` took, for the report.
var upDuration time.Duration

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	reuse := os.Getenv("NETTRACE_E2E_REUSE") == "1"
	if !reuse {
		// The tests need a lab of their own, made from nothing: a lab left
		// up (or half up, after a crash) is taken down first.
		if _, err := lab.Load(lab.DefaultStateDir); err == nil {
			fmt.Fprintln(os.Stderr, "a lab is up: the end-to-end tests take it down and bring up their own (NETTRACE_E2E_REUSE=1 uses it instead)")
			if out, err := exec.Command(bin("nettrace-lab"), "down").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "nettrace-lab down: %v\n%s", err, out)
				return 1
			}
		}
	}
	before, err := takeSnapshot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot before the lab:", err)
		return 1
	}
	start := time.Now()
	out, err := exec.Command(bin("nettrace-lab"), "up", "--with-examples").CombinedOutput()
	upDuration = time.Since(start)
	fmt.Fprintf(os.Stderr, "%s", out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettrace-lab up:", err)
		if !reuse {
			_ = exec.Command(bin("nettrace-lab"), "down").Run()
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "lab up with every example pod Running in %.1fs\n", upDuration.Seconds())
	code := m.Run()
	if reuse {
		return code
	}
	if err := killNodeRuntime("k8s-w1"); err != nil {
		fmt.Fprintln(os.Stderr, "killing the node runtime before down:", err)
		code = 1
	}
	if out, err := exec.Command(bin("nettrace-lab"), "down").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "nettrace-lab down: %v\n%s", err, out)
		code = 1
	}
	after, err := takeSnapshot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot after down:", err)
		return 1
	}
	if diff := before.diff(after); diff != "" {
		fmt.Fprintf(os.Stderr, "FAIL: nettrace-lab down did not restore the machine:\n%s", diff)
		code = 1
	} else {
		fmt.Fprintln(os.Stderr, "ok: after down, netns, links, iptables (legacy and nft), nftables and processes are as before up")
	}
	return code
}

// killNodeRuntime kills a node's runtime with SIGKILL, as a crash would.
func killNodeRuntime(node string) error {
	pid, ok := proc.Running(filepath.Join(lab.DefaultStateDir, "run"), node+"-kubelet")
	if !ok {
		return fmt.Errorf("the node runtime of %s is not running", node)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// snapshot is the machine state that the lab must leave as it found it.
type snapshot struct {
	netns, links, iptablesLegacy, iptablesNFT, nft string
	// procs maps pid to command line.
	procs map[string]string
}

func takeSnapshot() (*snapshot, error) {
	s := &snapshot{procs: map[string]string{}}
	for _, c := range []struct {
		out  *string
		argv []string
	}{
		{&s.netns, []string{"ip", "netns", "list"}},
		{&s.links, []string{"ip", "-o", "link", "show"}},
		{&s.iptablesLegacy, []string{"iptables-legacy-save"}},
		{&s.iptablesNFT, []string{"iptables-nft-save"}},
		{&s.nft, []string{"nft", "list", "ruleset"}},
	} {
		out, err := exec.Command(c.argv[0], c.argv[1:]...).Output()
		if err != nil {
			return nil, fmt.Errorf("%v: %w", c.argv, err)
		}
		*c.out = normalize(string(out))
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		s.procs[e.Name()] = string(bytes.ReplaceAll(bytes.TrimRight(cmdline, "\x00"), []byte{0}, []byte{' '}))
	}
	return s, nil
}

// normalize drops what changes by itself: iptables-save's timestamps and
// counters, and link statistics.
func normalize(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.Index(line, " ["); strings.HasPrefix(line, ":") && i > 0 {
			line = line[:i]
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// diff says what differs. Processes count only when they are new and
// belong to the lab: they run one of its binaries or live in its state.
func (b *snapshot) diff(a *snapshot) string {
	var out strings.Builder
	for _, c := range []struct{ name, before, after string }{
		{"ip netns list", b.netns, a.netns},
		{"ip link", stripLinkNoise(b.links), stripLinkNoise(a.links)},
		{"iptables-legacy-save", b.iptablesLegacy, a.iptablesLegacy},
		{"iptables-nft-save", b.iptablesNFT, a.iptablesNFT},
		{"nft list ruleset", b.nft, a.nft},
	} {
		if c.before != c.after {
			fmt.Fprintf(&out, "%s before:\n%s\n%s after:\n%s\n", c.name, c.before, c.name, c.after)
		}
	}
	for pid, cmd := range a.procs {
		if _, ok := b.procs[pid]; ok {
			continue
		}
		if strings.Contains(cmd, filepath.Join(repoRoot, "bin")) || strings.Contains(cmd, lab.DefaultStateDir) ||
			strings.Contains(cmd, ".cache/controlplane") {
			fmt.Fprintf(&out, "process left behind: %s %s\n", pid, cmd)
		}
	}
	return out.String()
}

// stripLinkNoise keeps the link names only: other tests on the machine may
// change link flags and counters.
func stripLinkNoise(s string) string {
	var names []string
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

// labKubeconfig is the lab's admin kubeconfig.
func labKubeconfig(t testing.TB) string {
	t.Helper()
	return filepath.Join(lab.DefaultStateDir, "kubeconfig")
}

// clientset is a cluster-admin client of the lab.
func clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", labKubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	// client-go caches TLS transports by certificate file names; the
	// kube-proxy tests bring up a new lab with new certificates under the
	// same names, so the contents must be part of the key.
	if err := rest.LoadTLSFiles(rc); err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(rc)
}

// run runs a command and returns its standard output; it fails the test with
// the command's output when the command fails.
func run(t testing.TB, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(argv, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// labExec runs `nettrace-lab exec TARGET -- CMD...`.
func labExec(t testing.TB, target string, argv ...string) string {
	t.Helper()
	return run(t, append([]string{bin("nettrace-lab"), "exec", target, "--"}, argv...)...)
}

// kubectl runs the lab's kubectl.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{bin("nettrace-lab"), "kubectl", "--"}, args...)...)
}
