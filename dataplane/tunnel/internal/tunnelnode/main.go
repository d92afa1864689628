// Command tunnelnode runs the tunnel dataplane of one node until it is interrupted, for
// scripts/bench/tunnel.sh: it sets up the node's tunnel in the current network namespace,
// syncs the blocks given, prints "ready", and on SIGINT or SIGTERM prints the userspace IPIP
// stats and closes the dataplane.
//
//	tunnelnode -name node1 -ip 192.168.10.101 -dev eth0 -mode ipip -tunnel-addr 172.16.1.0 \
//		-block 172.16.1.0/24,node1,192.168.10.101 -block 172.16.2.0/24,node2,192.168.10.102
//
// A block is CIDR,NODE,NODE-IP with ,VTEP-MAC,VTEP-IP appended for VXLAN mode.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/kubectl-nettrace/nettrace/dataplane/tunnel"
)

// blockFlags collects the repeated -block flags.
type blockFlags []tunnel.Block

func (b *blockFlags) String() string { return fmt.Sprint(len(*b), " blocks") }

func (b *blockFlags) Set(s string) error {
	fields := strings.Split(s, ",")
	if len(fields) != 3 && len(fields) != 5 {
		return fmt.Errorf("block %q: want CIDR,NODE,NODE-IP[,VTEP-MAC,VTEP-IP]", s)
	}
	var block tunnel.Block
	var err error
	if block.CIDR, err = netip.ParsePrefix(fields[0]); err != nil {
		return err
	}
	block.Node = fields[1]
	if block.NodeIP, err = netip.ParseAddr(fields[2]); err != nil {
		return err
	}
	if len(fields) == 5 {
		if block.VTEPMAC, err = net.ParseMAC(fields[3]); err != nil {
			return err
		}
		if block.VTEPIP, err = netip.ParseAddr(fields[4]); err != nil {
			return err
		}
	}
	*b = append(*b, block)
	return nil
}

func main() {
	var (
		node       tunnel.Node
		ip         string
		tunnelAddr string
		vtepMAC    string
		mode       string
		profile    string
		blocks     blockFlags
	)
	flag.StringVar(&node.Name, "name", "", "node name")
	flag.StringVar(&ip, "ip", "", "node underlay address")
	flag.StringVar(&node.Interface, "dev", "eth0", "underlay interface")
	flag.StringVar(&tunnelAddr, "tunnel-addr", "", "address of tunl0 or vxlan.calico")
	flag.StringVar(&vtepMAC, "vtep-mac", "", "MAC address of vxlan.calico")
	flag.StringVar(&mode, "mode", "ipip", "ipip, vxlan or none")
	flag.Var(&blocks, "block", "CIDR,NODE,NODE-IP[,VTEP-MAC,VTEP-IP] (repeat)")
	flag.StringVar(&profile, "cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()

	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tunnelnode:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "tunnelnode: profiling:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}

	if err := run(node, ip, tunnelAddr, vtepMAC, mode, blocks); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "tunnelnode:", err)
		os.Exit(1)
	}
}

func run(node tunnel.Node, ip, tunnelAddr, vtepMAC, mode string, blocks []tunnel.Block) error {
	var err error
	if node.IP, err = netip.ParseAddr(ip); err != nil {
		return fmt.Errorf("-ip: %w", err)
	}
	if tunnelAddr != "" {
		if node.TunnelAddr, err = netip.ParseAddr(tunnelAddr); err != nil {
			return fmt.Errorf("-tunnel-addr: %w", err)
		}
	}
	if vtepMAC != "" {
		if node.VTEPMAC, err = net.ParseMAC(vtepMAC); err != nil {
			return fmt.Errorf("-vtep-mac: %w", err)
		}
	}
	node.Mode = tunnel.Mode(mode)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	dp, err := tunnel.New(node)
	if err != nil {
		return err
	}
	if err := dp.Sync(blocks); err != nil {
		return errors.Join(err, dp.Close())
	}
	fmt.Printf("ready: %s mode %s, userspace IPIP %v\n", node.Name, mode, dp.Userspace())
	<-stop
	if dp.Userspace() {
		fmt.Printf("userspace IPIP stats of %s: %+v\n", node.Name, dp.Stats())
	}
	return dp.Close()
}
