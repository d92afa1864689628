package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/assert"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// assertOptions are the flags of `kubectl nettrace assert`.
type assertOptions struct {
	file  string
	junit string
}

// newAssertCommand returns `kubectl nettrace assert -f paths.yaml`, which
// traces the cases of an expectation file and checks their paths.
func newAssertCommand(flags *genericclioptions.ConfigFlags) *cobra.Command {
	o := &assertOptions{}
	cmd := &cobra.Command{
		Use:   "assert -f paths.yaml [--junit FILE]",
		Short: "Trace the flows of an expectation file and check their paths, for CI",
		Long: "Trace each case of an expectation file, as `kubectl nettrace SOURCE TARGET` would, and check its\n" +
			"path: the NAT rewrites and where they lead, the tunnel between nodes, the rules it must and must\n" +
			"not hit, and how it ends. Each failed expectation is shown with what was expected, what was\n" +
			"observed, and the observed path. docs/assert.md describes the file.\n\n" +
			"Exit codes: 0 every case holds, 1 a case failed, 2 bad input (the file, or a case that names\n" +
			"what does not exist), 3 a trace could not run, 4 forbidden, 5 interrupted.",
		Example: "  kubectl nettrace assert -f docs/paths.yaml\n" +
			"  kubectl nettrace assert -f paths.yaml --junit report.xml",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ran(runAssert(cmd, flags, o))
		},
	}
	cmd.Flags().StringVarP(&o.file, "filename", "f", "", "the expectation file")
	cmd.Flags().StringVar(&o.junit, "junit", "", "also write the results to this file as JUnit XML")
	cmd.MarkFlagRequired("filename")
	return cmd
}

func runAssert(cmd *cobra.Command, flags *genericclioptions.ConfigFlags, o *assertOptions) error {
	data, err := os.ReadFile(o.file)
	if err != nil {
		return usageError{fmt.Errorf("reading the expectation file: %w", err)}
	}
	file, err := assert.Parse(o.file, data)
	if err != nil {
		return usageError{fmt.Errorf("%d mistakes in the expectation file:\n%w", countLines(err), err)}
	}
	kube, dyn, namespace, err := kubeClients(flags)
	if err != nil {
		return err
	}
	for i := range file.Cases {
		file.Cases[i].Namespace = cmp.Or(file.Cases[i].Namespace, namespace)
	}
	tracer := func(ctx context.Context, c assert.Case) (*trace.Path, error) {
		return traceCase(ctx, kube, dyn, c, cmd.ErrOrStderr())
	}
	results := assert.Run(cmd.Context(), file, tracer, assert.NewCluster(kube))

	stdout := cmd.OutOrStdout()
	if err := assert.WriteReport(stdout, file, results); err != nil {
		return err
	}
	if o.junit != "" {
		var buf bytes.Buffer
		if err := assert.WriteJUnit(&buf, file, results); err != nil {
			return err
		}
		if err := os.WriteFile(o.junit, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("writing the JUnit report: %w", err)
		}
	}
	var errs []error
	failed := 0
	for _, r := range results {
		switch {
		case r.Err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", r.Case.Name, r.Err))
		case !r.Passed():
			failed++
		}
	}
	switch {
	case len(errs) > 0:
		return errors.Join(errs...)
	case failed > 0:
		return fmt.Errorf("%d of %d cases %w", failed, len(results), errFailed)
	}
	return nil
}

// countLines counts the lines of a joined error: one mistake each.
func countLines(err error) int { return strings.Count(err.Error(), "\n") + 1 }

// kubeClients makes the clients of the kubeconfig flags, and returns the
// kubeconfig's namespace.
func kubeClients(flags *genericclioptions.ConfigFlags) (kubernetes.Interface, dynamic.Interface, string, error) {
	namespace, _, err := flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: reading the namespace of the kubeconfig: %w", cluster.ErrCannotRun, err)
	}
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: loading the kubeconfig: %w", cluster.ErrCannotRun, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: %w", cluster.ErrCannotRun, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: %w", cluster.ErrCannotRun, err)
	}
	return kube, dyn, namespace, nil
}

// sendGrace is how long the command that sends a live case's traffic may
// go on after the trace ended, before it is killed.
const sendGrace = 5 * time.Second

// traceCase traces the flow of one case across the cluster. A live case
// with a command to send its traffic runs the command once the agents
// have armed; the command's output goes to stderr when it fails.
func traceCase(ctx context.Context, kube kubernetes.Interface, dyn dynamic.Interface, c assert.Case, stderr io.Writer) (*trace.Path, error) {
	opts := cluster.Options{
		Kube: kube, Dynamic: dyn, Namespace: c.Namespace,
		Source: c.Source, Target: c.Target, Proto: c.Proto, Port: c.Port, Live: c.Live, Timeout: c.Timeout,
	}
	sendCtx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	var send *exec.Cmd
	var sendErr error
	var output bytes.Buffer
	if len(c.Send) > 0 {
		opts.Armed = func() {
			send = exec.CommandContext(sendCtx, c.Send[0], c.Send[1:]...)
			send.Stdout, send.Stderr = &output, &output
			if sendErr = send.Start(); sendErr != nil {
				send = nil
			}
		}
	}
	path, err := cluster.Run(ctx, opts)
	if send != nil {
		kill := time.AfterFunc(sendGrace, stopSend)
		if werr := send.Wait(); werr != nil {
			fmt.Fprintf(stderr, "%s: %s: %v\n%s", c.Name, strings.Join(c.Send, " "), werr, output.String())
		}
		kill.Stop()
	}
	if sendErr != nil {
		return path, errors.Join(err, fmt.Errorf("%w: sending the traffic with %q: %w",
			cluster.ErrCannotRun, strings.Join(c.Send, " "), sendErr))
	}
	return path, err
}
