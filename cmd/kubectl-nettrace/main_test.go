package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
)

// binary is the command, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kubectl-nettrace-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// World-readable, so that the test run as nobody can start it.
	os.Chmod(dir, 0o755)
	binary = filepath.Join(dir, "kubectl-nettrace")
	// Without symbols and DWARF, which halves the link of a binary this size.
	if out, err := exec.Command("go", "build", "-ldflags=-s -w", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the command: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is how a run of the command ended.
type result struct {
	code           int
	stdout, stderr string
}

// runCommand runs the command to its end.
func runCommand(t *testing.T, args ...string) result {
	t.Helper()
	return runIn(t, nil, args...)
}

// runIn runs the command inside netns, which is then its current network
// namespace, so that `cleanup` never looks at the host's own.
func runIn(t *testing.T, netns *enginetest.Netns, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	if netns != nil {
		cmd = exec.Command("nsenter", append([]string{"--net=" + netns.Path(), binary}, args...)...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running %v: %v", args, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// nodeArgs are the arguments of `node` on the cluster's node.
func nodeArgs(c *enginetest.Cluster, args ...string) []string {
	return append([]string{"node", "--netns", c.Node.Netns.Path(), "--node-name", enginetest.NodeName}, args...)
}

func TestNode(t *testing.T) {
	c := enginetest.NewCluster(t, "nft")
	before := enginetest.NetfilterState(t, c.Node.Netns)

	t.Run("table", func(t *testing.T) {
		r := runCommand(t, nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr)...)
		if r.code != exitOK {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		for _, want := range []string{
			`KUBE-SEP-TOJ6KBVFMXNEZ7KU #2 "default/web" DNAT 10.96.0.100:80 → 172.16.1.11:80`,
			"[k8s-w1] pod 172.16.1.11 eth0 → delivered\n",
			"verdict: replied: SYN-ACK\n",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("output lacks %q:\n%s", want, r.stdout)
			}
		}
		if !strings.Contains(r.stderr, "armed on k8s-w1: capturing on calia1b2c3d4e5f (inbound), cali0f1e2d3c4b5 (inbound), eth0, pod 172.16.1.10 eth0 (inbound), pod 172.16.1.11 eth0 (inbound)") {
			t.Errorf("progress does not say where it captured:\n%s", r.stderr)
		}
	})
	t.Run("json, icmp and pcap", func(t *testing.T) {
		pcap := filepath.Join(t.TempDir(), "trace.pcapng")
		r := runCommand(t, nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServerIP+"/icmp", "-o", "json", "--pcap", pcap)...)
		if r.code != exitOK {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var path trace.Path
		if err := json.Unmarshal([]byte(r.stdout), &path); err != nil {
			t.Fatalf("decoding the output: %v\n%s", err, r.stdout)
		}
		if path.SchemaVersion != trace.SchemaVersion || path.Flow.Proto != trace.ICMP || path.Verdict.Result != trace.Replied {
			t.Errorf("path %s %s %+v, want an icmp path that was replied", path.SchemaVersion, path.Flow, path.Verdict)
		}
		if fi, err := os.Stat(pcap); err != nil || fi.Size() == 0 || !strings.Contains(r.stderr, "wrote "+pcap) {
			t.Errorf("pcapng file %s: %v, stderr %s", pcap, err, r.stderr)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"node", "--from", enginetest.ClientIP}, `required flag(s) "to" not set`},
			{nodeArgs(c, "--from", "172.16.9.9", "--to", enginetest.ServiceAddr),
				"172.16.9.9 is not a pod on this node: no route via a cali* interface"},
			{nodeArgs(c, "--from", "fd00::1", "--to", "[fd00::2]:80"), "IPv6 is not supported yet"},
			{nodeArgs(c, "--from", enginetest.ClientIP, "--to", "10.96.0.100"), "needs a destination port"},
			{nodeArgs(c, "--from", enginetest.ClientIP, "--to", "10.96.0.100:80/sctp"), `unknown protocol "sctp"`},
			{nodeArgs(c, "--from", enginetest.ClientIP, "--to", "10.96.0.100:http"), `bad port "http"`},
			{nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr, "--probe", "--live"), "none of the others can be"},
			{nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr, "-o", "xml"), `unknown output format "xml"`},
			{nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr, "--netns", "/nonexistent"), "/nonexistent"},
			{[]string{"node", "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr, "extra"}, "takes no arguments"},
			{[]string{"node", "--frm", enginetest.ClientIP}, "unknown flag: --frm"},
			{[]string{"trace"}, `want SOURCE and TARGET, got 0 arguments`},
		} {
			r := runCommand(t, tc.args...)
			if r.code != exitBadInput || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, r.code, r.stderr, exitBadInput, tc.want)
			}
		}
	})
	t.Run("not root", func(t *testing.T) {
		cmd := exec.Command(binary, nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != exitCannotRun {
			t.Errorf("exit %d, want %d: %s", code, exitCannotRun, stderr.String())
		}
	})
	if after := enginetest.NetfilterState(t, c.Node.Netns); after != before {
		t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
	}
}

func TestVersion(t *testing.T) {
	r := runCommand(t, "version")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "kubectl-nettrace devel") {
		t.Errorf("exit %d, output %q", r.code, r.stdout)
	}
}

// rawTable makes the legacy backend arm TRACE rules, and bind nf_log,
// rather than an nft table.
const rawTable = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

// live is a live trace started in the background, waiting for traffic
// that never comes.
type live struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr strings.Builder
	ready  chan struct{}
}

// startLive starts a live trace with a long timeout and waits until it is
// armed; the test kills it if it still runs at the end.
func startLive(t *testing.T, c *enginetest.Cluster) *live {
	t.Helper()
	l := &live{cmd: exec.Command(binary, nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr,
		"--live", "--timeout", "1m")...), ready: make(chan struct{})}
	pipe, err := l.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l.cmd.ProcessState == nil {
			l.cmd.Process.Kill()
			l.cmd.Wait()
		}
	})
	go func() {
		s := bufio.NewScanner(pipe)
		for s.Scan() {
			l.mu.Lock()
			l.stderr.WriteString(s.Text() + "\n")
			l.mu.Unlock()
			if strings.HasPrefix(s.Text(), "waiting up to") {
				close(l.ready)
			}
		}
	}()
	select {
	case <-l.ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("the trace did not arm in 30 s:\n%s", l.output())
	}
	return l
}

func (l *live) output() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stderr.String()
}

// TestKill kills a live trace mid-way with SIGINT, SIGTERM and SIGKILL, on
// each backend. After SIGINT or SIGTERM the trace restores the node itself
// and exits 4; after SIGKILL the node is restored by `cleanup` or by the
// next trace. Each time, both iptables backends, the nftables ruleset and
// the nf_log binding are as before the trace.
func TestKill(t *testing.T) {
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name    string
				signal  syscall.Signal
				restore func(t *testing.T, c *enginetest.Cluster)
			}{
				{"SIGINT", syscall.SIGINT, nil},
				{"SIGTERM", syscall.SIGTERM, nil},
				{"SIGKILL then cleanup", syscall.SIGKILL, func(t *testing.T, c *enginetest.Cluster) {
					r := runIn(t, c.Node.Netns, "cleanup")
					want := "current network namespace: removed session "
					if r.code != exitOK || !strings.Contains(r.stdout, want) {
						t.Errorf("cleanup: exit %d, output %q, want %q", r.code, r.stdout+r.stderr, want)
					}
				}},
				{"SIGKILL then the next trace", syscall.SIGKILL, func(t *testing.T, c *enginetest.Cluster) {
					r := runCommand(t, nodeArgs(c, "--from", enginetest.ClientIP, "--to", enginetest.ServiceAddr)...)
					if r.code != exitOK || !strings.Contains(r.stderr, "removed what dead tracer session") {
						t.Errorf("next trace: exit %d, stderr %q", r.code, r.stderr)
					}
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					c := enginetest.NewCluster(t, backend)
					if backend == "legacy" {
						c.Node.Netns.RunInput(t, rawTable, "iptables-legacy-restore", "--noflush")
					}
					before := enginetest.NetfilterState(t, c.Node.Netns)
					l := startLive(t, c)
					if armed := enginetest.NetfilterState(t, c.Node.Netns); armed == before {
						t.Fatal("the armed trace changed nothing on the node")
					}
					if err := l.cmd.Process.Signal(tc.signal); err != nil {
						t.Fatal(err)
					}
					l.cmd.Wait()
					status := l.cmd.ProcessState.Sys().(syscall.WaitStatus)
					if tc.signal == syscall.SIGKILL {
						if !status.Signaled() {
							t.Fatalf("the trace ended with %v, not by SIGKILL", l.cmd.ProcessState)
						}
						if left := enginetest.NetfilterState(t, c.Node.Netns); left == before {
							t.Fatal("the killed trace left nothing to clean up")
						}
						tc.restore(t, c)
					} else if code := status.ExitStatus(); code != exitInterrupted {
						t.Errorf("exit %d, want %d:\n%s", code, exitInterrupted, l.output())
					}
					if after := enginetest.NetfilterState(t, c.Node.Netns); after != before {
						t.Errorf("the node's netfilter state is not restored:\n%s\nbefore:\n%s", after, before)
					}
				})
			}
		})
	}
}

func TestCleanupNothing(t *testing.T) {
	n := enginetest.NewNetns(t)
	r := runIn(t, n, "cleanup", "--netns", n.Path())
	want := "current network namespace: nothing to remove\n" + n.Path() + ": nothing to remove\n"
	if r.code != exitOK || r.stdout != want {
		t.Errorf("exit %d, output %q, want %q", r.code, r.stdout+r.stderr, want)
	}
	if r := runIn(t, n, "cleanup", "--netns", "/nonexistent"); r.code != exitBadInput {
		t.Errorf("cleanup of a missing netns: exit %d, want %d", r.code, exitBadInput)
	}
}

// TestBesidesCancel checks what an interrupted run reports besides the
// interruption: a failure to restore the node, never the cancellation.
func TestBesidesCancel(t *testing.T) {
	restore := errors.New("closing the netfilter tracer on k8s-w1: nft: busy")
	for _, tc := range []struct {
		err  error
		want error
	}{
		{nil, nil},
		{ran(context.Canceled), nil},
		{ran(fmt.Errorf("arming conntrack on k8s-w1: %w", context.Canceled)), nil},
		{ran(errors.Join(context.Canceled, restore)), restore},
		{ran(errors.Join(context.Canceled, errors.Join(nil, restore))), restore},
	} {
		got := besidesCancel(tc.err)
		if (got == nil) != (tc.want == nil) || got != nil && got.Error() != tc.want.Error() {
			t.Errorf("besidesCancel(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
