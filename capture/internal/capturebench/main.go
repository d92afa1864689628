// Command capturebench runs one capture for scripts/bench/capture.sh: it
// opens a capture on an interface inside a named network namespace, counts
// the hops until SIGINT or SIGTERM, writes the kept packets as pcapng, and
// prints "received N dropped M" for the script to compare with tcpdump.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/capture"
	"github.com/kubectl-nettrace/nettrace/trace"
)

func main() {
	var (
		netns    = flag.String("netns", "", "path of the network namespace, such as /run/netns/NAME")
		iface    = flag.String("iface", "", "interface to capture on")
		proto    = flag.String("proto", "udp", "protocol of the traced flow: tcp, udp or icmp")
		port     = flag.Uint("port", 0, "port of the traced flow")
		ring     = flag.Int("ring", capture.DefaultRingSize, "kernel ring size in bytes")
		snaplen  = flag.Int("snaplen", capture.DefaultSnaplen, "bytes kept of each packet")
		output   = flag.String("w", os.DevNull, "pcapng file to write at the end")
		startedF = flag.String("started", "", "file created once the capture is armed")
		inbound  = flag.Bool("inbound", false, "capture only what the interface receives")
	)
	flag.Parse()
	if err := run(*netns, *iface, *proto, uint16(*port), *ring, *snaplen, *inbound, *output, *startedF); err != nil {
		fmt.Fprintln(os.Stderr, "capturebench:", err)
		os.Exit(1)
	}
}

func run(netnsPath, iface, protoName string, port uint16, ring, snaplen int, inbound bool, output, started string) error {
	proto, err := trace.ParseProto(protoName)
	if err != nil {
		return err
	}
	target, err := ns.GetNS(netnsPath)
	if err != nil {
		return fmt.Errorf("opening netns: %w", err)
	}
	defer target.Close()
	cfg := capture.Config{Iface: iface, Node: "bench", Match: trace.Match{Proto: proto, Ports: []uint16{port}}, RingSize: ring, Snaplen: snaplen, Inbound: inbound}
	var c *capture.Capture
	if err := target.Do(func(ns.NetNS) error {
		c, err = capture.Open(cfg)
		return err
	}); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var hops atomic.Int64
	if err := c.Arm(ctx, func(trace.Hop) { hops.Add(1) }); err != nil {
		return err
	}
	if started != "" {
		if err := os.WriteFile(started, nil, 0o644); err != nil {
			return err
		}
	}
	<-ctx.Done()
	if _, err := c.Close(); err != nil {
		return err
	}
	f, err := os.Create(output)
	if err != nil {
		return err
	}
	if err := capture.WriteFile(f, c); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	s := c.Stats()
	fmt.Printf("received %d dropped %d hops %d notkept %d\n", s.Received, s.Dropped, hops.Load(), s.NotKept)
	return nil
}
