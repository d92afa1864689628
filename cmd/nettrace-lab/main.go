// Command nettrace-lab runs a multi-node Kubernetes cluster on one machine:
// nodes are network namespaces, the control plane is real Kubernetes, and
// the pod network, service NAT and DNS are the project's reference
// dataplane. See `nettrace-lab --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kubectl-nettrace/nettrace/lab"
)

// Exit codes, so that scripts can tell failures apart.
const (
	exitFailure = 1
	exitUsage   = 2
	exitNotUp   = 3
)

// usageError marks an error in the command line.
type usageError struct{ error }

// passthrough is the failure of the command that `exec` or `kubectl` ran,
// whose exit status nettrace-lab exits with.
type passthrough struct{ *exec.ExitError }

// passStatus marks the error of a command run for the user.
func passStatus(err error) error {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return passthrough{exitErr}
	}
	return err
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	var passed passthrough
	var usage usageError
	switch {
	case errors.As(err, &passed):
		// The command run by exec or kubectl failed: pass its status on;
		// it has said why itself.
		os.Exit(passed.ExitCode())
	case errors.Is(err, lab.ErrNotUp):
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(exitNotUp)
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(exitUsage)
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(exitFailure)
}

// globals are the flags every subcommand shares.
type globals struct {
	stateDir        string
	binDir          string
	controlPlaneDir string
}

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "nettrace-lab",
		Short: "A multi-node Kubernetes lab on one machine, for kubectl nettrace",
		Long: `nettrace-lab runs a Kubernetes cluster whose nodes are network namespaces on one
machine: real etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
the project's node runtime, CNI plugin (block IPAM, proxy ARP, IPIP), service NAT
and DNS. It must run as root.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	exe, _ := os.Executable()
	binDir := filepath.Dir(exe)
	cpDir := os.Getenv("NETTRACE_CONTROLPLANE_DIR")
	if cpDir == "" {
		cpDir = filepath.Join(binDir, "..", ".cache", "controlplane")
	}
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", lab.DefaultStateDir, "where the lab keeps its files")
	root.PersistentFlags().StringVar(&g.binDir, "bin-dir", binDir, "where the project's binaries are (make build puts them in bin/)")
	root.PersistentFlags().StringVar(&g.controlPlaneDir, "controlplane-dir", cpDir, "where the control-plane binaries are (make controlplane; $NETTRACE_CONTROLPLANE_DIR)")
	root.AddCommand(
		newUpCommand(g),
		newDownCommand(g),
		newStatusCommand(g),
		newKubeconfigCommand(g),
		newKubectlCommand(g),
		newExecCommand(g),
		newKubeletCommand(g),
		newImageCommand(),
		newContainerInitCommand(),
	)
	return root
}

// load reads the configuration of the running lab.
func (g *globals) load() (*lab.Config, error) {
	cfg, err := lab.Load(g.stateDir)
	if err != nil {
		return nil, err
	}
	cfg.BinDir, cfg.ControlPlaneDir = g.binDir, g.controlPlaneDir
	return cfg, nil
}
