package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
	"github.com/kubectl-nettrace/nettrace/trace/render"
)

// traceOptions are the flags of `kubectl nettrace SOURCE TARGET`.
type traceOptions struct {
	proto   string
	port    uint16
	live    bool
	timeout time.Duration
	pcap    string
	output  string
}

// newTraceCommand returns `kubectl nettrace trace SOURCE TARGET`, which
// traces a flow across the cluster through the agents of its nodes;
// traceAtRoot makes the root command run it as `kubectl nettrace SOURCE
// TARGET`. flags are the root's kubectl flags (--kubeconfig, -n, …).
func newTraceCommand(flags *genericclioptions.ConfigFlags) *cobra.Command {
	o := &traceOptions{}
	cmd := &cobra.Command{
		Use:   "trace SOURCE TARGET",
		Short: "Trace a flow from a pod across the cluster, through the nettrace agents of its nodes",
		Long: "Trace one flow from the pod SOURCE to TARGET across the cluster: the nettrace agent of every node\n" +
			"involved (the source pod's, the target's endpoints') arms netfilter tracing, conntrack and captures,\n" +
			"the source node's agent sends one probe (or, with --live, waits for the pod's own packet), and the\n" +
			"hops of every node are merged into one path: each interface, rule, NAT, ARP reply, tunnel and\n" +
			"delivery, and the reply.\n\n" +
			"SOURCE is a pod of the namespace, NAME or pod/NAME, or ip/A.B.C.D, an address outside the cluster\n" +
			"whose own traffic a --live trace follows, from the node it enters by (a node port's or the\n" +
			"load balancer's) to the pod. TARGET is one of:\n" +
			"  svc-b[:PORT]  svc/b[:PORT]     a service of the namespace (PORT: number or name)\n" +
			"  pod/x[:PORT]                   a pod of the namespace\n" +
			"  IP[:PORT]                      an address: a service's cluster IP, a pod's IP, a node's or a\n" +
			"                                 load balancer's address and port, another\n" +
			"  node/NAME:NODEPORT             a node port of a node\n" +
			"  NAME.DOMAIN[:PORT]             a DNS name: the lookup through the cluster DNS is traced first\n" +
			"  external:IP:PORT               an address outside the cluster\n\n" +
			"Exit codes: 2 bad input, 3 the trace could not run, 4 forbidden, 5 interrupted.",
		Example: "  kubectl nettrace client svc/nginx-test\n" +
			"  kubectl nettrace -n shop frontend backend:8080 -o wide\n" +
			"  kubectl nettrace client pod/server-w2:80 --pcap trace.pcapng\n" +
			"  kubectl nettrace client kube-dns.kube-system.svc.cluster.local:53 --proto udp\n" +
			"  kubectl nettrace client node/k8s-w2:31000\n" +
			"  kubectl nettrace client external:192.168.10.250:80 --live --timeout 1m\n" +
			"  kubectl nettrace ip/192.168.10.1 node/k8s-w2:31010 --live --timeout 1m",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("want SOURCE and TARGET, got %d arguments %q", len(args), args)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return ran(runTrace(cmd, flags, o, args[0], args[1]))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.proto, "proto", "", "protocol: tcp, udp or icmp (default: the service port's, or tcp)")
	f.Uint16Var(&o.port, "port", 0, "destination port, when TARGET names none")
	f.BoolVar(&o.live, "live", false, "wait for the source to send the flow's packet itself")
	f.DurationVar(&o.timeout, "timeout", cluster.DefaultTimeout, "how long to wait for the answer, or with --live for the first packet")
	f.StringVar(&o.pcap, "pcap", "", "write the packets of every node, merged, to this pcapng file")
	f.StringVarP(&o.output, "output", "o", string(render.Table), "output format: "+formatNames())
	return cmd
}

// traceAtRoot makes root run trace for its positional arguments, so that
// `kubectl nettrace SOURCE TARGET` traces; the other subcommands keep their
// names.
func traceAtRoot(root, trace *cobra.Command) {
	root.Use = "kubectl-nettrace SOURCE TARGET"
	root.Args = trace.Args
	root.RunE = trace.RunE
	root.Example = trace.Example
	root.Flags().AddFlagSet(trace.LocalFlags())
}

func runTrace(cmd *cobra.Command, flags *genericclioptions.ConfigFlags, o *traceOptions, source, target string) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	format, err := render.ParseFormat(o.output)
	if err != nil {
		return usageError{err}
	}
	if o.timeout <= 0 {
		return usageError{fmt.Errorf("--timeout %s: want a positive duration", o.timeout)}
	}
	opts := cluster.Options{Source: source, Target: target, Proto: o.proto, Port: o.port, Live: o.live, Timeout: o.timeout}
	if opts.Namespace, _, err = flags.ToRawKubeConfigLoader().Namespace(); err != nil {
		return fmt.Errorf("%w: reading the namespace of the kubeconfig: %w", cluster.ErrCannotRun, err)
	}
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("%w: loading the kubeconfig: %w", cluster.ErrCannotRun, err)
	}
	if opts.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("%w: %w", cluster.ErrCannotRun, err)
	}
	if opts.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return fmt.Errorf("%w: %w", cluster.ErrCannotRun, err)
	}

	var pcap *os.File
	if o.pcap != "" {
		if pcap, err = os.Create(o.pcap); err != nil {
			return usageError{fmt.Errorf("creating the pcapng file: %w", err)}
		}
		defer pcap.Close()
		opts.Pcap = pcap
	}
	renderOpts := render.Options{Color: isTerminal(stdout) && os.Getenv("NO_COLOR") == ""}
	lookup := func(p *trace.Path) { renderLookup(stdout, stderr, *p, format, renderOpts) }
	opts.Lookup = lookup
	stopSpinner := func() {}
	if isTerminal(stderr) {
		s := startSpinner(stderr)
		stopSpinner = s.stop
		defer s.stop()
		opts.Progress = s.set
		opts.Lookup = func(p *trace.Path) { s.pause(func() { lookup(p) }) }
	}

	path, err := cluster.Run(cmd.Context(), opts)
	stopSpinner()
	if path == nil {
		if pcap != nil {
			pcap.Close()
			os.Remove(o.pcap)
		}
		return err
	}
	if rerr := render.Render(stdout, *path, format, renderOpts); rerr != nil {
		return errors.Join(err, rerr)
	}
	warnMissing(stderr, path)
	if pcap != nil && err == nil {
		if cerr := pcap.Close(); cerr != nil {
			return fmt.Errorf("writing %s: %w", o.pcap, cerr)
		}
		fmt.Fprintf(stderr, "wrote %s\n", o.pcap)
	}
	return err
}

// renderLookup writes the path of the DNS lookup before the flow's.
func renderLookup(stdout, stderr io.Writer, p trace.Path, format render.Format, opts render.Options) {
	switch format {
	case render.HTML:
		fmt.Fprintf(stderr, "looked up %s: the page shows the flow only\n", p.Flow)
		return
	case render.YAML:
		defer fmt.Fprintln(stdout, "---")
	case render.Table, render.Wide:
		fmt.Fprintf(stdout, "DNS lookup:\n")
		defer fmt.Fprintln(stdout)
	}
	if err := render.Render(stdout, p, format, opts); err != nil {
		fmt.Fprintf(stderr, "warning: %v\n", err)
	}
}

// warnMissing says on stderr which nodes the path misses.
func warnMissing(stderr io.Writer, p *trace.Path) {
	for _, l := range p.Lost {
		if l.Source == cluster.AgentSource {
			fmt.Fprintf(stderr, "warning: the path is incomplete: %s: %s\n", l.Node, l.Detail)
		}
	}
}
