package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine"
	"github.com/kubectl-nettrace/nettrace/trace/render"
)

// nodeOptions are the flags of `kubectl nettrace node`.
type nodeOptions struct {
	from, to    string
	probe, live bool
	timeout     time.Duration
	output      string
	pcap        string
	fullPayload bool
	netns       string
	nodeName    string
}

func newNodeCommand(stdout, stderr io.Writer) *cobra.Command {
	o := &nodeOptions{}
	cmd := &cobra.Command{
		Use:   "node --from IP --to IP[:PORT][/tcp|udp|icmp]",
		Short: "Trace one flow on the node where this runs, without an API server",
		Long: "Trace one flow from a pod on this node: find the pod's network namespace by its IP, arm the\n" +
			"netfilter tracer, conntrack and captures on the pod's eth0, the cali* veths, the tunnel devices\n" +
			"and the underlay NIC, send one probe (or, with --live, wait for the pod's own packet), and show\n" +
			"every hop of the packet and its reply. Runs in the current network namespace (a node's root\n" +
			"namespace) or the one given by --netns. Everything the trace adds is removed when it ends,\n" +
			"also on SIGINT or SIGTERM; what a killed trace left is removed by the next one or by cleanup.",
		Example: "  kubectl nettrace node --from 172.16.1.5 --to 10.96.0.10:53/udp\n" +
			"  kubectl nettrace node --from 172.16.1.5 --to 172.16.2.7/icmp -o wide --pcap trace.pcapng\n" +
			"  kubectl nettrace node --from 172.16.1.5 --to 10.96.143.238:80 --live --timeout 1m",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ran(runNode(cmd, o, stdout, stderr))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "IP of the source pod, on this node")
	f.StringVar(&o.to, "to", "", "destination: IP:PORT for tcp (the default) and udp, IP for icmp, then /PROTO")
	f.BoolVar(&o.probe, "probe", false, "send one probe packet from the source pod (the default)")
	f.BoolVar(&o.live, "live", false, "wait for the source pod to send the flow's packet itself")
	f.DurationVar(&o.timeout, "timeout", engine.DefaultTimeout, "how long to wait for the answer, or with --live for the first packet")
	f.StringVarP(&o.output, "output", "o", string(render.Table), "output format: "+formatNames())
	f.StringVar(&o.pcap, "pcap", "", "write the captured packets to this pcapng file")
	f.BoolVar(&o.fullPayload, "full-payload", false, "capture packets whole, not only their headers")
	f.StringVar(&o.netns, "netns", "", "path of the node's network namespace (default: the current one)")
	f.StringVar(&o.nodeName, "node-name", "", "name of the node in the output (default: the host name)")
	cmd.MarkFlagRequired("from")
	cmd.MarkFlagRequired("to")
	cmd.MarkFlagsMutuallyExclusive("probe", "live")
	return cmd
}

func formatNames() string {
	names := make([]string, len(render.Formats))
	for i, f := range render.Formats {
		names[i] = string(f)
	}
	return strings.Join(names, ", ")
}

func runNode(cmd *cobra.Command, o *nodeOptions, stdout, stderr io.Writer) error {
	req, format, err := o.request()
	if err != nil {
		return err
	}
	req.Progress = stderr
	var pcap *os.File
	if o.pcap != "" {
		if pcap, err = os.Create(o.pcap); err != nil {
			return usageError{fmt.Errorf("creating the pcapng file: %w", err)}
		}
		defer pcap.Close()
		req.Pcap = pcap
	}
	path, err := engine.Trace(cmd.Context(), req)
	if errors.Is(err, engine.ErrInvalid) || len(path.Hops) == 0 && path.Verdict.Result == "" {
		if pcap != nil {
			os.Remove(o.pcap)
		}
		return err
	}
	opts := render.Options{Color: isTerminal(stdout) && os.Getenv("NO_COLOR") == ""}
	if rerr := render.Render(stdout, path, format, opts); rerr != nil {
		return errors.Join(err, rerr)
	}
	if pcap != nil {
		if cerr := pcap.Close(); cerr != nil {
			return errors.Join(err, fmt.Errorf("writing %s: %w", o.pcap, cerr))
		}
		fmt.Fprintf(stderr, "wrote %s\n", o.pcap)
	}
	return err
}

// request turns the flags into a trace request and an output format.
func (o *nodeOptions) request() (engine.Request, render.Format, error) {
	format, err := render.ParseFormat(o.output)
	if err != nil {
		return engine.Request{}, "", usageError{err}
	}
	from, err := netip.ParseAddr(o.from)
	if err != nil {
		return engine.Request{}, "", usageError{fmt.Errorf("--from %q: want the IP of a pod", o.from)}
	}
	flow, err := parseTarget(o.to)
	if err != nil {
		return engine.Request{}, "", usageError{err}
	}
	flow.Src = from
	mode := engine.Probe
	if o.live {
		mode = engine.Live
	}
	if o.timeout <= 0 {
		return engine.Request{}, "", usageError{fmt.Errorf("--timeout %s: want a positive duration", o.timeout)}
	}
	return engine.Request{
		Node:        o.nodeName,
		Netns:       o.netns,
		Flow:        flow,
		Mode:        mode,
		Timeout:     o.timeout,
		FullPayload: o.fullPayload,
	}, format, nil
}

// parseTarget parses --to: "IP:PORT", "IP:PORT/tcp", "IP:PORT/udp" or
// "IP/icmp"; IPv6 addresses go in brackets with a port.
func parseTarget(s string) (trace.Flow, error) {
	proto := trace.TCP
	addr := s
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		p, err := trace.ParseProto(s[i+1:])
		if err != nil {
			return trace.Flow{}, fmt.Errorf("--to %q: %w", s, err)
		}
		proto, addr = p, s[:i]
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if ap.Port() == 0 {
			return trace.Flow{}, fmt.Errorf("--to %q: port 0", s)
		}
		return trace.Flow{Proto: proto, Dst: ap.Addr(), DstPort: ap.Port()}, nil
	}
	if a, err := netip.ParseAddr(addr); err == nil {
		return trace.Flow{Proto: proto, Dst: a}, nil
	}
	if host, port, ok := strings.Cut(addr, ":"); ok {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return trace.Flow{}, fmt.Errorf("--to %q: bad port %q", s, port)
		}
		return trace.Flow{}, fmt.Errorf("--to %q: bad IP %q", s, host)
	}
	return trace.Flow{}, fmt.Errorf("--to %q: want IP:PORT[/tcp|udp] or IP/icmp", s)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
