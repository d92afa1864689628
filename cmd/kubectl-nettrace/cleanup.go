package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/spf13/cobra"

	"github.com/kubectl-nettrace/nettrace/trace/netfilter"
)

func newCleanupCommand(stdout io.Writer) *cobra.Command {
	var paths []string
	cmd := &cobra.Command{
		Use:   "cleanup [--netns PATH]...",
		Short: "Remove what every tracer left in the current network namespace and the given ones",
		Long: "Remove, in the current network namespace and in each one given by --netns, the iptables rules\n" +
			"and chains, nftables tables and nf_log binding of every nettrace session, running or not, and\n" +
			"print what was removed. A trace cleans up after itself, and after dead ones when it starts;\n" +
			"this is for a node where a killed trace left something and no trace runs any more.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ran(runCleanup(stdout, paths))
		},
	}
	cmd.Flags().StringArrayVar(&paths, "netns", nil, "also clean the network namespace at this path (repeatable)")
	return cmd
}

func runCleanup(stdout io.Writer, paths []string) error {
	var errs []error
	for _, path := range append([]string{""}, paths...) {
		where := path
		if where == "" {
			where = "current network namespace"
		}
		removed, err := cleanupIn(path)
		for _, s := range removed {
			fmt.Fprintf(stdout, "%s: removed session %s (pid %d, started %s)\n",
				where, s.ID, s.PID, s.Started.Format(time.RFC3339))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		} else if len(removed) == 0 {
			fmt.Fprintf(stdout, "%s: nothing to remove\n", where)
		}
	}
	return errors.Join(errs...)
}

// cleanupIn runs netfilter.CleanupAll in the namespace at path, or in the
// current one.
func cleanupIn(path string) ([]netfilter.Session, error) {
	if path == "" {
		return netfilter.CleanupAll()
	}
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, usageError{fmt.Errorf("opening network namespace: %w", err)}
	}
	defer n.Close()
	var removed []netfilter.Session
	err = n.Do(func(ns.NetNS) error {
		var err error
		removed, err = netfilter.CleanupAll()
		return err
	})
	return removed, err
}
