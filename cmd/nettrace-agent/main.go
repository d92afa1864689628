// Command nettrace-agent is the node agent of `kubectl nettrace`: one runs
// on each node, in the node's network namespace, and runs the node's part
// of the NetTraces that involve it (see package trace/agent). At start it
// removes what killed tracers left on the node; on SIGTERM or SIGINT it
// stops every session, restoring the node, before it exits.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/trace/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "nettrace-agent: %v\n", err)
		os.Exit(1)
	}
}

// options are the agent's flags.
type options struct {
	node, nodeIP, kubeconfig string
	ttlGrace                 time.Duration
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "nettrace-agent --node NAME [--node-ip IP]",
		Short:         "The node agent of kubectl nettrace",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	f.StringVar(&o.nodeIP, "node-ip", os.Getenv("NODE_IP"), "address of this node, checked to be in this network namespace (default $NODE_IP)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; the in-cluster configuration when empty")
	f.DurationVar(&o.ttlGrace, "ttl-grace", agent.DefaultTTLGrace, "how long a NetTrace is kept after its timeout before it is deleted")
	return cmd
}

// run runs the agent until ctx ends.
func run(ctx context.Context, o options) error {
	if o.node == "" {
		return errors.New("--node is required")
	}
	// The node's namespace is taken before anything else runs: every
	// thread is still in it.
	dataplane, err := agent.NodeDataplane()
	if err != nil {
		return err
	}
	if o.nodeIP != "" {
		if err := checkNodeIP(o.nodeIP); err != nil {
			return err
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading the client configuration: %w", err)
	}
	cfg.UserAgent = "nettrace-agent/" + o.node
	cfg.QPS, cfg.Burst = cmp.Or(cfg.QPS, 50), cmp.Or(cfg.Burst, 100)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating the dynamic client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating the client: %w", err)
	}
	a, err := agent.New(agent.Config{
		Node:      o.node,
		Dynamic:   dyn,
		Kube:      kube,
		Dataplane: dataplane,
		Log:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
		TTLGrace:  o.ttlGrace,
	})
	if err != nil {
		return err
	}
	start := time.Now()
	err = a.Run(ctx)
	slog.Info("stopped", "node", o.node, "ran", time.Since(start).Round(time.Second))
	return err
}

// checkNodeIP makes sure the agent runs in the node's network namespace:
// the node's address must be one of its interfaces'.
func checkNodeIP(s string) error {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("--node-ip %q: %w", s, err)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("listing this namespace's addresses: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if local, ok := netip.AddrFromSlice(n.IP); ok && local.Unmap() == ip {
				return nil
			}
		}
	}
	return fmt.Errorf("--node-ip %s is not an address of this network namespace: run the agent in the node's", ip)
}
