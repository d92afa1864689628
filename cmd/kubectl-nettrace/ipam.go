package main

import (
	"fmt"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// newIPAMCommand returns `kubectl nettrace ipam`, whose `show` prints the
// pod address pools and blocks of the CNI's block IPAM, as `calicoctl ipam
// show` does.
func newIPAMCommand(flags *genericclioptions.ConfigFlags) *cobra.Command {
	ipamCmd := &cobra.Command{
		Use:   "ipam",
		Short: "Show the pod address pools and the blocks the nodes claimed",
		Args:  noArgs,
	}
	var showBlocks bool
	show := &cobra.Command{
		Use:   "show [--show-blocks]",
		Short: "Print each IP pool's usage and, with --show-blocks, each claimed block's",
		Long: "Print how many addresses of each IP pool are in use and, with --show-blocks, of each block a\n" +
			"node claimed from it, as `calicoctl ipam show` does. The pools and blocks are the IPPool and\n" +
			"IPAMBlock resources of the reference dataplane's block IPAM.",
		Example: "  kubectl nettrace ipam show\n  kubectl nettrace ipam show --show-blocks",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ran(runIPAMShow(cmd, flags, showBlocks))
		},
	}
	show.Flags().BoolVar(&showBlocks, "show-blocks", false, "also print each block that a node claimed")
	ipamCmd.AddCommand(show)
	return ipamCmd
}

func runIPAMShow(cmd *cobra.Command, flags *genericclioptions.ConfigFlags, showBlocks bool) error {
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("%w: loading the kubeconfig: %w", cluster.ErrCannotRun, err)
	}
	client, err := ipam.NewClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("%w: %w", cluster.ErrCannotRun, err)
	}
	err = ipam.Show(cmd.Context(), client, cmd.OutOrStdout(), showBlocks)
	switch {
	case err == nil:
		return nil
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w: you may not list the IP pools and blocks: %w", cluster.ErrForbidden, err)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%w: the API server does not serve the IPAM's resources: is the reference CNI installed? %w",
			cluster.ErrCannotRun, err)
	}
	return fmt.Errorf("%w: %w", cluster.ErrCannotRun, err)
}
