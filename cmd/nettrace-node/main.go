// Command nettrace-node is the reference dataplane's node daemon: routes and
// tunnels between nodes, host rules, service NAT and IPAM leak collection for
// the node it runs on (see package dataplane/node).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/dataplane/node"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		cfg                         node.Config
		kubeconfig                  string
		nodeIP, clusterCIDR, lbPool string
	)
	cmd := &cobra.Command{
		Use:           "nettrace-node --node NAME --node-ip IP",
		Short:         "The reference dataplane's node daemon",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.NodeIP, err = netip.ParseAddr(nodeIP); err != nil || !cfg.NodeIP.Is4() {
				return fmt.Errorf("--node-ip %q: want the node's IPv4 address", nodeIP)
			}
			if clusterCIDR != "" {
				if cfg.ClusterCIDR, err = netip.ParsePrefix(clusterCIDR); err != nil {
					return fmt.Errorf("--cluster-cidr: %w", err)
				}
			}
			if lbPool != "" {
				if cfg.LBPool, err = netip.ParsePrefix(lbPool); err != nil {
					return fmt.Errorf("--lb-pool: %w", err)
				}
			}
			if cfg.NodeName == "" {
				return fmt.Errorf("--node is required")
			}
			rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return fmt.Errorf("loading kubeconfig: %w", err)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			return node.Run(cmd.Context(), cfg, rc)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the node daemon (empty: in-cluster)")
	f.StringVar(&cfg.NodeName, "node", "", "this node's name")
	f.StringVar(&nodeIP, "node-ip", "", "this node's underlay address")
	f.StringVar(&cfg.Interface, "interface", "", "the underlay interface (default: the default route's)")
	f.StringVar(&cfg.Pool, "pool", "default-ipv4-ippool", "the IPPool whose blocks are routed")
	f.StringVar(&clusterCIDR, "cluster-cidr", "", "the pod pool, for the service NAT's masquerade rule")
	f.BoolVar(&cfg.ServiceNAT, "service-nat", true, "run the reference service NAT (false: the real kube-proxy runs)")
	f.StringVar(&lbPool, "lb-pool", "", "underlay addresses for LoadBalancer services (empty: no load balancer)")
	f.DurationVar(&cfg.LeakGrace, "ipam-leak-grace", 5*time.Minute, "how long an address of a vanished pod is kept")
	return cmd
}
