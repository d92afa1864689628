package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubectl-nettrace/nettrace/lab"
)

func newUpCommand(g *globals) *cobra.Command {
	cfg := lab.DefaultConfig()
	var (
		underlay, podPool, serviceCIDR, lbPool string
		withExamples                           bool
		examplesDir                            string
		timeout                                time.Duration
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Bring the lab up (idempotent: completes a lab that is partly up)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, p := range []struct {
				flag string
				in   string
				out  *netip.Prefix
			}{{"--underlay", underlay, &cfg.Underlay}, {"--pod-pool", podPool, &cfg.PodPool}, {"--service-cidr", serviceCIDR, &cfg.ServiceCIDR}, {"--lb-pool", lbPool, &cfg.LoadBalancerPool}} {
				v, err := netip.ParsePrefix(p.in)
				if err != nil {
					return usageError{fmt.Errorf("%s %q: %w", p.flag, p.in, err)}
				}
				*p.out = v
			}
			cfg.StateDir, cfg.BinDir, cfg.ControlPlaneDir = g.stateDir, g.binDir, g.controlPlaneDir
			if err := cfg.Validate(); err != nil {
				return usageError{err}
			}
			start := time.Now()
			out := cmd.OutOrStdout()
			l, err := lab.Up(cmd.Context(), cfg, out)
			if err != nil {
				return err
			}
			if withExamples {
				if err := l.ApplyExamples(cmd.Context(), examplesDir); err != nil {
					return err
				}
				fmt.Fprintf(out, "✓ examples applied from %s\n", examplesDir)
			}
			if err := l.WaitPodsRunning(cmd.Context(), timeout); err != nil {
				return err
			}
			fmt.Fprintf(out, "✓ all pods Running (%.1fs since up started)\n", time.Since(start).Seconds())
			fmt.Fprintf(out, "\nThe lab is up. kubeconfig: %s\n  %s kubectl -- get nodes -o wide\n", cfg.Kubeconfig(), "nettrace-lab")
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "number of nodes: k8s-m, then k8s-w1, k8s-w2, …")
	f.StringVar(&underlay, "underlay", cfg.Underlay.String(), "the nodes' network (k8s-m at .10, workers from .101)")
	f.StringVar(&podPool, "pod-pool", cfg.PodPool.String(), "the pod IP pool")
	f.IntVar(&cfg.BlockSize, "block-size", cfg.BlockSize, "prefix length of the per-node IPAM blocks")
	f.StringVar(&serviceCIDR, "service-cidr", cfg.ServiceCIDR.String(), "the ClusterIP range")
	f.StringVar(&lbPool, "lb-pool", cfg.LoadBalancerPool.String(), "underlay addresses for LoadBalancer services")
	f.StringVar(&cfg.ServiceProxy, "service-proxy", cfg.ServiceProxy, "service proxy on every node: nettrace, kube-proxy-iptables or kube-proxy-nftables")
	f.StringVar(&cfg.Encapsulation, "encapsulation", cfg.Encapsulation, "pod traffic between nodes: ipip, vxlan or none")
	f.BoolVar(&withExamples, "with-examples", false, "apply the seed's examples (docs/examples) and wait until every pod is Running")
	f.StringVar(&examplesDir, "examples-dir", filepath.Join(g.binDir, "..", "docs", "examples"), "where the examples are")
	f.DurationVar(&timeout, "timeout", 3*time.Minute, "how long to wait for the pods")
	return cmd
}

func newDownCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the lab: every process, netns, link, rule and file it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(g.stateDir); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The lab is down.")
			return nil
		},
	}
}
