package netfilter

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// The test binary runs itself as a tracer that the test kills: with
// childNetnsEnv set, it arms in that namespace, says so, and waits.
const (
	childNetnsEnv = "NETTRACE_NETFILTER_TEST_CHILD_NETNS"
	childPortEnv  = "NETTRACE_NETFILTER_TEST_CHILD_PORT"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(childNetnsEnv); path != "" {
		os.Exit(runChildTracer(path, os.Getenv(childPortEnv)))
	}
	os.Exit(m.Run())
}

// runChildTracer arms a tracer in the namespace at path, prints "armed
// <session tag>" and waits to be killed.
func runChildTracer(path, port string) int {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	tr, err := New(Options{Node: "child", Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(p)}}})
	if err == nil {
		err = ns.WithNetNSPath(path, func(ns.NetNS) error { return tr.Arm(context.Background(), func(trace.Hop) {}) })
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("armed %s\n", tr.Session().Tag())
	select {}
}

// nodeKinds are the rulesets the cleanup tests run on, one per way of
// arming.
var nodeKinds = []struct {
	name string
	load func(t *testing.T, n *testNetns)
}{
	{"legacy TRACE", func(t *testing.T, n *testNetns) { loadRules(t, n, Legacy, true) }},
	{"legacy without raw", func(t *testing.T, n *testNetns) { loadRules(t, n, Legacy, false) }},
	{"iptables-nft", func(t *testing.T, n *testNetns) { loadRules(t, n, Nft, true) }},
	{"both", func(t *testing.T, n *testNetns) {
		loadRules(t, n, Legacy, true)
		n.mustRun(t, "table inet fw {\n\tchain c {\n\t\ttype filter hook forward priority 0;\n\t}\n}\n", "nft", "-f", "-")
	}},
}

// cleanupStaleIn runs CleanupStale in the namespace.
func cleanupStaleIn(t *testing.T, n *testNetns, maxAge time.Duration) []Session {
	t.Helper()
	var removed []Session
	n.do(t, func() error {
		var err error
		removed, err = CleanupStale(maxAge)
		return err
	})
	return removed
}

// stateFileOf returns the path of the namespace's nf_log state file.
func stateFileOf(t *testing.T, n *testNetns) string {
	t.Helper()
	h := &netnsHandle{ns: n.ns}
	b, err := newNfLogBinding(h)
	if err != nil {
		t.Fatal(err)
	}
	return b.statePath()
}

// assertArmed checks that a session's marks are in the namespace.
func assertArmed(t *testing.T, n *testNetns, s Session) {
	t.Helper()
	state := netfilterState(t, n)
	if !strings.Contains(state, s.Tag()) {
		t.Fatalf("session %s left no tagged rule or table:\n%s", s.Tag(), state)
	}
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// abandon drops a tracer's process state without Close, as a killed
// tracer would: sockets and handles go, rules, table and nf_log binding stay.
func (t *Tracer) abandon() {
	t.closeOnce.Do(func() {
		if t.nftrace != nil {
			t.nftrace.Close()
		}
		if t.nflog != nil {
			t.nflog.Close()
		}
		t.links.close()
		t.netns.close()
	})
}

func TestStaleSessionIsCleanedUp(t *testing.T) {
	for _, kind := range nodeKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			n := newTestNetns(t)
			kind.load(t, n)
			before := netfilterState(t, n)
			tr, err := New(Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(freePort())}}})
			if err != nil {
				t.Fatal(err)
			}
			tr.session.PID = deadPID(t)
			n.do(t, func() error { return tr.Arm(context.Background(), func(trace.Hop) {}) })
			// What Widen adds goes with the rest.
			widened := trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(freePort()), uint16(freePort())},
				Ends: []netip.AddrPort{netip.MustParseAddrPort("10.2.0.2:8080")}}
			if err := tr.Widen(widened); err != nil {
				t.Fatal(err)
			}
			tr.abandon()
			assertArmed(t, n, tr.session)

			removed := cleanupStaleIn(t, n, 0)
			if len(removed) != 1 || removed[0] != tr.session {
				t.Errorf("CleanupStale removed %+v, want session %+v", removed, tr.session)
			}
			if after := netfilterState(t, n); after != before {
				t.Errorf("CleanupStale left the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if _, err := os.Stat(stateFileOf(t, n)); !os.IsNotExist(err) {
				t.Errorf("nf_log state file still there: %v", err)
			}
		})
	}
}

func TestKilledTracerIsCleanedUp(t *testing.T) {
	for _, kind := range nodeKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			n := newTestNetns(t)
			kind.load(t, n)
			before := netfilterState(t, n)

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childNetnsEnv+"="+n.ns.Path(), fmt.Sprintf("%s=%d", childPortEnv, freePort()))
			cmd.Stderr = os.Stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			line, err := bufio.NewReader(stdout).ReadString('\n')
			tag, ok := strings.CutPrefix(strings.TrimSpace(line), "armed ")
			session, parsed := parseTag(tag)
			if err != nil || !ok || !parsed || session.PID != cmd.Process.Pid {
				t.Fatalf("child said %q, %v", line, err)
			}
			assertArmed(t, n, session)
			if !session.Alive() {
				t.Fatal("the running child's session is not alive")
			}
			if removed := cleanupStaleIn(t, n, 0); len(removed) != 0 {
				t.Fatalf("CleanupStale removed the live session: %+v", removed)
			}

			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			if session.Alive() {
				t.Fatal("the killed child's session is alive")
			}
			if kind.name == "legacy TRACE" {
				// A tracer armed before the cleanup takes the nf_log binding
				// the dead one recorded, and restores that one.
				tr := arm(t, n, Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(freePort())}}}, func(trace.Hop) {})
				if _, err := tr.Close(); err != nil {
					t.Fatal(err)
				}
				if got, want := nfLogLine(netfilterState(t, n)), nfLogLine(before); got != want {
					t.Errorf("after a tracer ran over the dead one's binding: %s, want %s", got, want)
				}
			}
			removed := cleanupStaleIn(t, n, 0)
			if len(removed) != 1 || removed[0] != session {
				t.Errorf("CleanupStale removed %+v, want the killed session %+v", removed, session)
			}
			if after := netfilterState(t, n); after != before {
				t.Errorf("CleanupStale left the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if _, err := os.Stat(stateFileOf(t, n)); !os.IsNotExist(err) {
				t.Errorf("nf_log state file still there: %v", err)
			}
		})
	}
}

func nfLogLine(state string) string {
	line, _, _ := strings.Cut(state, "\n")
	return line
}

func TestCleanupOfLiveSessions(t *testing.T) {
	t.Parallel()
	n := newTestNetns(t)
	loadRules(t, n, Legacy, true)
	before := netfilterState(t, n)
	match := trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(freePort())}}

	tr := arm(t, n, Options{Match: match}, func(trace.Hop) {})
	if removed := cleanupStaleIn(t, n, time.Hour); len(removed) != 0 {
		t.Fatalf("CleanupStale removed a live, young session: %+v", removed)
	}
	assertArmed(t, n, tr.session)
	time.Sleep(1100 * time.Millisecond)
	if removed := cleanupStaleIn(t, n, time.Second); len(removed) != 1 || removed[0] != tr.session {
		t.Fatalf("CleanupStale with a max age of 1s removed %+v, want the session", removed)
	}
	if after := netfilterState(t, n); after != before {
		t.Errorf("CleanupStale left the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := tr.Close(); err != nil {
		t.Errorf("Close after the session was cleaned up: %v", err)
	}

	tr = arm(t, n, Options{Match: match}, func(trace.Hop) {})
	var removed []Session
	n.do(t, func() error {
		var err error
		removed, err = CleanupAll()
		return err
	})
	if len(removed) != 1 || removed[0] != tr.session {
		t.Fatalf("CleanupAll removed %+v, want the live session", removed)
	}
	if after := netfilterState(t, n); after != before {
		t.Errorf("CleanupAll left the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := tr.Close(); err != nil {
		t.Errorf("Close after CleanupAll: %v", err)
	}
}

func TestSecondLegacyTracerIsRefused(t *testing.T) {
	t.Parallel()
	n := newTestNetns(t)
	loadRules(t, n, Legacy, true)
	arm(t, n, Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(freePort())}}}, func(trace.Hop) {})
	armed := netfilterState(t, n)
	second, err := New(Options{Match: trace.Match{Proto: trace.TCP, Ports: []uint16{uint16(freePort())}}})
	if err != nil {
		t.Fatal(err)
	}
	err = n.ns.Do(func(ns.NetNS) error { return second.Arm(context.Background(), func(trace.Hop) {}) })
	if err == nil || !strings.Contains(err.Error(), "another tracer or nflog listener") {
		t.Fatalf("second Arm = %v, want an error naming the other tracer", err)
	}
	if got := netfilterState(t, n); got != armed {
		t.Errorf("the failed Arm changed the namespace:\nbefore:\n%s\nafter:\n%s", armed, got)
	}
}
