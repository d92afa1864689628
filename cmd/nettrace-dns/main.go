// Command nettrace-dns is the cluster DNS server of the nettrace reference
// dataplane; see package dataplane/dns. In the lab it runs as the pods
// behind the kube-dns Service.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	nettracedns "github.com/kubectl-nettrace/nettrace/dataplane/dns"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// resolvConf is where the default upstreams are read from.
const resolvConf = "/etc/resolv.conf"

// options are the command line of nettrace-dns.
type options struct {
	cfg        nettracedns.Config
	kubeconfig string
}

func newCommand() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "nettrace-dns",
		Short: "The cluster DNS server of the nettrace reference dataplane",
		Long: `nettrace-dns answers the cluster domain from the Kubernetes API (Services,
EndpointSlices, Namespaces) as the Kubernetes DNS specification says, and
forwards every other name to upstream servers through a cache.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.Listen, "listen", ":53", "address of the DNS listeners, UDP and TCP")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; the in-cluster configuration when empty")
	f.StringVar(&o.cfg.ClusterDomain, "cluster-domain", "cluster.local", "the zone answered from the cluster")
	f.StringArrayVar(&o.cfg.Upstreams, "upstream", nil, "upstream server, ip or ip:port, repeatable (default: the nameservers of "+resolvConf+")")
	f.StringVar(&o.cfg.MetricsListen, "metrics-listen", ":9153", "address of the Prometheus /metrics endpoint; empty disables it")
	f.DurationVar(&o.cfg.CacheTTLMax, "cache-ttl-max", 30*time.Second, "longest time an upstream answer is cached")
	f.IntVar(&o.cfg.MaxConcurrent, "max-concurrent", 1000, "forwarded questions in flight; more are REFUSED")
	f.StringVar(&o.cfg.HealthListen, "health-listen", ":8080", "address of /health and /ready; empty disables it")
	return cmd
}

func (o *options) run(ctx context.Context) error {
	if len(o.cfg.Upstreams) == 0 {
		upstreams, err := resolvConfUpstreams(resolvConf)
		if err != nil {
			return err
		}
		o.cfg.Upstreams = upstreams
	}
	if o.cfg.CacheTTLMax <= 0 || o.cfg.MaxConcurrent <= 0 {
		return errors.New("--cache-ttl-max and --max-concurrent must be positive")
	}
	restConfig, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	restConfig.UserAgent = "nettrace-dns"
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("making the Kubernetes client: %w", err)
	}
	o.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv, err := nettracedns.NewServer(o.cfg, client)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// restConfig loads kubeconfig, or the in-cluster configuration when empty.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// resolvConfUpstreams returns the nameservers of a resolv.conf as ip:port.
func resolvConfUpstreams(path string) ([]string, error) {
	conf, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading upstreams from %s: %w", path, err)
	}
	if len(conf.Servers) == 0 {
		return nil, fmt.Errorf("no nameserver in %s: give --upstream", path)
	}
	upstreams := make([]string, 0, len(conf.Servers))
	for _, s := range conf.Servers {
		upstreams = append(upstreams, net.JoinHostPort(s, conf.Port))
	}
	return upstreams, nil
}
