package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// traceRoot builds a root command that traces for its positional
// arguments, as the plugin's root does.
func traceRoot(t *testing.T, kubeconfig string) (*cobra.Command, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := &cobra.Command{Use: "kubectl-nettrace", SilenceErrors: true, SilenceUsage: true}
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	flags := genericclioptions.NewConfigFlags(true)
	flags.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	tr := newTraceCommand(flags)
	root.AddCommand(tr, newVersionCommand(&stdout))
	traceAtRoot(root, tr)
	root.SetArgs([]string{"--kubeconfig", kubeconfig})
	return root, &stdout, &stderr
}

func TestTraceCommandExitCodes(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-kubeconfig")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{args: []string{"client"}, code: exitBadInput, want: "want SOURCE and TARGET"},
		{args: []string{"client", "svc/a", "extra"}, code: exitBadInput, want: "want SOURCE and TARGET"},
		{args: []string{"client", "svc/a", "-o", "svg"}, code: exitBadInput, want: `unknown output format "svg"`},
		{args: []string{"client", "svc/a", "--timeout", "0s"}, code: exitBadInput, want: "--timeout 0s"},
		{args: []string{"client", "svc/a", "--bogus"}, code: exitBadInput, want: "unknown flag"},
		{args: []string{"trace", "client", "svc/a", "--port", "70000"}, code: exitBadInput, want: "invalid argument"},
		{args: []string{"client", "svc/a"}, code: exitCannotRun, want: "no-such-kubeconfig"},
	} {
		root, _, _ := traceRoot(t, missing)
		root.SetArgs(append([]string{"--kubeconfig", missing}, c.args...))
		err := root.ExecuteContext(context.Background())
		if code := exitCode(context.Background(), err); code != c.code || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: exit %d with %v; want %d with %q", c.args, code, err, c.code, c.want)
		}
	}
}

func TestTraceExitCodeOfEachKind(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		ctx  context.Context
		err  error
		code int
	}{
		{context.Background(), nil, exitOK},
		{context.Background(), ran(fmt.Errorf("resolving: %w", cluster.ErrInvalid)), exitBadInput},
		{context.Background(), ran(fmt.Errorf("creating: %w", cluster.ErrForbidden)), exitForbidden},
		{context.Background(), ran(fmt.Errorf("node k8s-w2: %w", cluster.ErrCannotRun)), exitCannotRun},
		{context.Background(), errors.New("cobra's own error about the command line"), exitBadInput},
		{context.Background(), ran(errors.New("anything else")), exitCannotRun},
		{canceled, context.Canceled, exitInterrupted},
	} {
		if got := exitCode(c.ctx, c.err); got != c.code {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.code)
		}
	}
}

func TestTraceAtRootKeepsTheSubcommands(t *testing.T) {
	root, stdout, _ := traceRoot(t, "")
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil || stdout.Len() == 0 {
		t.Fatalf("version under a tracing root: %v, %q", err, stdout.String())
	}
	if f := root.Flags().Lookup("live"); f == nil || root.Flags().ShorthandLookup("o") == nil {
		t.Fatal("the root does not take the trace's flags")
	}
}

func TestWarnMissingNamesTheNode(t *testing.T) {
	var stderr bytes.Buffer
	warnMissing(&stderr, &trace.Path{Lost: []trace.Loss{
		{Node: "k8s-w1", Source: "nflog", Count: 3, Detail: "dropped by the kernel"},
		{Node: "k8s-w2", Source: cluster.AgentSource, Count: 1, Detail: "the nettrace agent on k8s-w2 armed but did not report its hops"},
	}})
	want := "warning: the path is incomplete: k8s-w2: the nettrace agent on k8s-w2 armed but did not report its hops\n"
	if stderr.String() != want {
		t.Fatalf("stderr %q, want %q", stderr.String(), want)
	}
}

// lockedBuffer is a buffer the spinner and the test may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestSpinnerDrawsAndClearsItsLine(t *testing.T) {
	var out lockedBuffer
	s := startSpinner(&out)
	s.set("arming on k8s-w1, k8s-w2")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "arming on k8s-w1, k8s-w2") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s.pause(func() { out.Write([]byte("DNS lookup:\n")) })
	s.stop()
	s.stop()
	got := out.String()
	if !strings.Contains(got, " arming on k8s-w1, k8s-w2\x1b[K") {
		t.Fatalf("the spinner did not draw its message: %q", got)
	}
	if !strings.Contains(got, "\r\x1b[KDNS lookup:\n") {
		t.Errorf("the line was not cleared before the paused output: %q", got)
	}
	if !strings.HasSuffix(got, "\r\x1b[K") {
		t.Errorf("the line was not cleared at stop: %q", got)
	}
	n := len(out.String())
	time.Sleep(150 * time.Millisecond)
	if len(out.String()) != n {
		t.Error("the spinner draws after stop")
	}
}
