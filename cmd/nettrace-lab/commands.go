package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/lab"
	"github.com/kubectl-nettrace/nettrace/lab/images"
	"github.com/kubectl-nettrace/nettrace/lab/kubelet"
)

func newStatusCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's nodes and processes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "nodes: %d  underlay: %s  pod pool: %s  services: %s  service proxy: %s  encapsulation: %s\n",
				cfg.Nodes, cfg.Underlay, cfg.PodPool, cfg.ServiceCIDR, cfg.ServiceProxy, cfg.Encapsulation)
			fmt.Fprintf(out, "kubeconfig: %s\n\n", cfg.Kubeconfig())
			procs, err := cfg.Processes()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROCESS\tPID\tSTATE")
			down := 0
			for _, p := range procs {
				state := "running"
				if !p.Running {
					state, down = "stopped", down+1
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\n", p.Name, p.Pid, state)
			}
			tw.Flush()
			if down > 0 {
				return fmt.Errorf("%d lab processes are not running: `nettrace-lab up` starts them again", down)
			}
			return nil
		},
	}
}

func newKubeconfigCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "kubeconfig",
		Short: "Print the path of the lab's admin kubeconfig",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), cfg.Kubeconfig())
			return nil
		},
	}
}

func newKubectlCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl -- ARGS",
		Short:              "Run the lab's kubectl against the lab",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			return passStatus(cfg.Kubectl(cmd.Context(), os.Stdin, os.Stdout, os.Stderr, args...))
		},
	}
}

func newExecCommand(g *globals) *cobra.Command {
	var namespace, container string
	cmd := &cobra.Command{
		Use:   "exec (POD | node/NAME | external) [-c CONTAINER] [-n NAMESPACE] -- COMMAND...",
		Short: "Run a command in a pod's container, in a node's netns, or in the outside world",
		Example: `  nettrace-lab exec pod1 -c netshoot -- curl -s 127.0.0.1:80
  nettrace-lab exec node/k8s-w1 -- ip route
  nettrace-lab exec external -- curl -s 192.168.10.101:31010`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return usageError{fmt.Errorf("want one target, then -- and the command")}
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			c, err := cfg.ExecCommand(cmd.Context(), args[0], namespace, container, args[1:])
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			return passStatus(c.Run())
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "the pod's namespace")
	cmd.Flags().StringVarP(&container, "container", "c", "", "the container (default: the pod's first)")
	return cmd
}

// newKubeletCommand runs one node's runtime; `up` starts it in each node's
// netns.
func newKubeletCommand(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:    "kubelet --node NAME",
		Short:  "Run the node runtime of one lab node (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			topo, err := cfg.Topology()
			if err != nil {
				return err
			}
			n, ok := topo.Node(node)
			if !ok {
				return usageError{fmt.Errorf("no node %q in the lab", node)}
			}
			dir := cfg.NodeDir(node)
			rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "kubelet.kubeconfig"))
			if err != nil {
				return err
			}
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			svc := cfg.ServiceCIDR.Addr().Next()
			k, err := kubelet.New(kubelet.Config{
				NodeName:          n.Name,
				NodeIP:            n.IP,
				NodeNetns:         n.Netns(),
				Master:            n.Master,
				Dir:               dir,
				CNIConfDir:        cfg.CNIConfDir(node),
				CNIBinDir:         cfg.BinDir,
				ClusterDNS:        clusterDNS(cfg.ServiceCIDR),
				ClusterDomain:     "cluster.local",
				NodeResolvConf:    "nameserver " + lab.UpstreamDNSIP.String() + "\n",
				KubernetesService: svc,
				CAFile:            filepath.Join(cfg.ControlPlaneStateDir(), "pki", "ca.crt"),
				Images: kubelet.Images{
					LabBin: filepath.Join(cfg.BinDir, "nettrace-lab"),
					DNSBin: filepath.Join(cfg.BinDir, "nettrace-dns"),
				},
			}, cs)
			if err != nil {
				return err
			}
			return k.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node's name")
	return cmd
}

// clusterDNS is the tenth address of the service range, as kubeadm picks it:
// 10.96.0.10 for 10.96.0.0/12.
func clusterDNS(services netip.Prefix) netip.Addr {
	b := services.Addr().As4()
	b[3] += 10
	return netip.AddrFrom4(b)
}

// newImageCommand runs the built-in programs that stand in for images.
func newImageCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Built-in programs standing in for container images", Hidden: true}
	var nginxListen, dnsListen, name, answer string
	var port int
	nginx := &cobra.Command{
		Use: "nginx", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return images.Nginx(cmd.Context(), nginxListen) },
	}
	nginx.Flags().StringVar(&nginxListen, "listen", ":80", "address to serve on")
	whoami := &cobra.Command{
		Use: "whoami", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if v := os.Getenv("WHOAMI_PORT_NUMBER"); v != "" && !cmd.Flags().Changed("port") {
				if _, err := fmt.Sscan(v, &port); err != nil {
					return usageError{fmt.Errorf("WHOAMI_PORT_NUMBER=%q: %w", v, err)}
				}
			}
			if name == "" {
				name = os.Getenv("WHOAMI_NAME")
			}
			return images.Whoami(cmd.Context(), fmt.Sprintf(":%d", port), name)
		},
	}
	whoami.Flags().IntVar(&port, "port", 80, "port to serve on")
	whoami.Flags().StringVar(&name, "name", "", "a name to print")
	upstream := &cobra.Command{
		Use: "upstream-dns", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ip := net.ParseIP(answer)
			if ip == nil {
				return usageError{fmt.Errorf("--answer %q is not an IP", answer)}
			}
			return images.UpstreamDNS(cmd.Context(), dnsListen, ip)
		},
	}
	upstream.Flags().StringVar(&dnsListen, "listen", ":53", "address to serve on")
	upstream.Flags().StringVar(&answer, "answer", lab.ExternalWebIP.String(), "the address every known name resolves to")
	cmd.AddCommand(nginx, whoami, upstream)
	return cmd
}

// newContainerInitCommand is the first process of every container.
func newContainerInitCommand() *cobra.Command {
	var hostname, serviceAccount, workdir string
	cmd := &cobra.Command{
		Use:    "container-init --hostname NAME -- COMMAND...",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return kubelet.ContainerInit(hostname, serviceAccount, workdir, args)
		},
	}
	cmd.Flags().StringVar(&hostname, "hostname", "", "the pod's hostname")
	cmd.Flags().StringVar(&serviceAccount, "service-account", "", "directory holding the service-account token to mount")
	cmd.Flags().StringVar(&workdir, "workdir", "", "working directory")
	return cmd
}
