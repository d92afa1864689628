// Command kubectl-nettrace is the kubectl plugin `kubectl nettrace`: it
// shows, hop by hop, what a packet meets on its way through a Kubernetes
// cluster. `kubectl nettrace SOURCE TARGET` traces a flow across the
// cluster through the node agents; `node` traces one flow on the node it
// runs on, without an API server; `assert` checks traced paths against an
// expectation file, for CI; `ipam show` prints the pod address pools and
// blocks; `cleanup` removes what killed tracers left behind; `version`
// prints the build.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/kubectl-nettrace/nettrace/trace/cluster"
	"github.com/kubectl-nettrace/nettrace/trace/engine"
)

// Exit codes, the same for every subcommand.
const (
	exitOK = 0
	// exitFailed: the command ran and its answer is no (assert: a case failed).
	exitFailed = 1
	// exitBadInput: bad flags, an unknown pod or service, an address that is
	// not a pod on the node, IPv6, a malformed expectation file.
	exitBadInput = 2
	// exitCannotRun: permissions, a source that failed to arm, a failed
	// restore, a node whose agent did not answer.
	exitCannotRun = 3
	// exitForbidden: RBAC refused a request.
	exitForbidden = 4
	// exitInterrupted: SIGINT or SIGTERM ended the run, after cleaning up.
	exitInterrupted = 5
)

// errFailed marks the error of a command that ran and whose answer is no:
// it exits with exitFailed.
var errFailed = errors.New("failed")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args and returns the exit code. SIGINT and
// SIGTERM cancel the context; they stay caught until run returns, so that
// a second signal cannot cut the cleanup short.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	code := exitCode(ctx, err)
	switch {
	case code == exitInterrupted:
		if rest := besidesCancel(err); rest != nil {
			fmt.Fprintf(stderr, "interrupted, and: %v\n", rest)
		} else {
			fmt.Fprintln(stderr, "interrupted; everything the trace changed was restored")
		}
	case err != nil:
		fmt.Fprintf(stderr, "error: %v\n", err)
		if code == exitBadInput {
			fmt.Fprintf(stderr, "see '%s --help'\n", cmd.CommandPath())
		}
	}
	return code
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-nettrace",
		Short: "Show every hop a packet meets in a Kubernetes cluster",
		Long: "kubectl nettrace follows one packet and its reply through a cluster's network: every interface,\n" +
			"iptables or nftables rule, conntrack NAT, ARP reply, tunnel and DNS lookup, hop by hop.",
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl nettrace"},
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	// The kubectl flags (--kubeconfig, --context, -n …) behave as in
	// kubectl; node and cleanup never contact an API server.
	flags := genericclioptions.NewConfigFlags(true)
	flags.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	traceCmd := newTraceCommand(flags)
	root.AddCommand(traceCmd, newNodeCommand(stdout, stderr), newCleanupCommand(stdout), newVersionCommand(stdout))
	root.AddCommand(newAssertCommand(flags))
	root.AddCommand(newIPAMCommand(flags))
	// `kubectl nettrace SOURCE TARGET` is `kubectl nettrace trace SOURCE TARGET`.
	traceAtRoot(root, traceCmd)
	return root
}

// usageError is an error in the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// ranError is an error of a command that ran, as opposed to cobra's own
// about the command line.
type ranError struct{ err error }

func (e ranError) Error() string { return e.err.Error() }
func (e ranError) Unwrap() error { return e.err }

// ran marks the error of a command's RunE.
func ran(err error) error {
	if err == nil {
		return nil
	}
	return ranError{err}
}

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.DisplayName(), args)}
	}
	return nil
}

// besidesCancel returns what err says besides the context's cancellation,
// such as a failure to restore the node; nil when nothing.
func besidesCancel(err error) error {
	var r ranError
	if errors.As(err, &r) {
		err = r.err
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var rest []error
		for _, e := range joined.Unwrap() {
			rest = append(rest, besidesCancel(e))
		}
		return errors.Join(rest...)
	}
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// exitCode maps the outcome of a run to the exit code.
func exitCode(ctx context.Context, err error) int {
	var (
		usage usageError
		ranE  ranError
	)
	switch {
	case ctx.Err() != nil:
		return exitInterrupted
	case err == nil:
		return exitOK
	case errors.Is(err, errFailed):
		return exitFailed
	case errors.As(err, &usage), errors.Is(err, engine.ErrInvalid), errors.Is(err, cluster.ErrInvalid), !errors.As(err, &ranE):
		return exitBadInput
	case errors.Is(err, cluster.ErrForbidden):
		return exitForbidden
	}
	return exitCannotRun
}
