package probe

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/probe/probetest"
)

func TestCandidatesSkipUsedPorts(t *testing.T) {
	used := map[uint16]bool{}
	for port := uint16(firstPort); port <= lastPort; port++ {
		used[port] = port != 40007 && port != 49999
	}
	used[firstPort-1], used[lastPort+1] = false, false
	got := candidates(used)
	slices.Sort(got)
	if !slices.Equal(got, []uint16{40007, 49999}) {
		t.Errorf("candidates() = %v, want the two free ports of the range", got)
	}
	if n := len(candidates(nil)); n != lastPort-firstPort+1 {
		t.Errorf("%d candidates with nothing used, want the whole range", n)
	}
}

// TestPlanAvoidsPortsInUse fills the range, in the client and in the
// router named by UniqueIn, with sockets and conntrack entries except for
// one port, and checks that Plan picks that port and holds it.
func TestPlanAvoidsPortsInUse(t *testing.T) {
	lab := probetest.New(t)
	const free = 44444
	var (
		owned  []int
		routed []uint16
	)
	t.Cleanup(func() {
		for _, fd := range owned {
			unix.Close(fd)
		}
	})
	// Ports in use, by kind of user: even ports by client listeners, odd
	// ones below 45000 by client conntrack entries, the rest by router
	// conntrack entries.
	err := lab.Client.Do(func(ns.NetNS) error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for port := firstPort; port <= lastPort; port++ {
			switch {
			case port == free:
			case port%2 == 0:
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				owned = append(owned, fd)
				if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
					return err
				}
				if err := unix.Listen(fd, 1); err != nil {
					return err
				}
			case port < 45000:
				if err := c.Create(ct.NewFlow(6, 0, probetest.ClientIP, probetest.ServerIP, uint16(port), 80, 60, 0)); err != nil {
					return err
				}
			default:
				routed = append(routed, uint16(port))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("occupying the client's ports: %v", err)
	}
	err = lab.Router.Do(func(ns.NetNS) error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, port := range routed {
			// As the router sees a masqueraded flow: only the reply
			// tuple carries the port.
			f := ct.NewFlow(6, 0, probetest.ClientIP, probetest.ServerIP, 1, 80, 60, 0)
			f.TupleOrig.Proto.SourcePort = port - 10000
			f.TupleReply.Proto.DestinationPort = port
			f.TupleReply.IP.DestinationAddress = probetest.RouterServerIP
			if err := c.Create(f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("occupying the router's ports: %v", err)
	}

	var p *Probe
	err = lab.Client.Do(func(ns.NetNS) error {
		var err error
		p, err = Plan(Spec{Kind: TCP, Dst: probetest.ServerIP, DstPort: probetest.TCPPort,
			UniqueIn: []string{lab.Router.Path()}})
		return err
	})
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	defer p.Close()
	want := trace.Flow{Proto: trace.TCP, Src: probetest.ClientIP, SrcPort: free, Dst: probetest.ServerIP, DstPort: probetest.TCPPort}
	if p.Flow() != want {
		t.Errorf("Plan chose %v, want %v", p.Flow(), want)
	}
	// The port is held until Send or Close.
	err = lab.Client.Do(func(ns.NetNS) error {
		l, err := net.Listen("tcp4", netip.AddrPortFrom(probetest.ClientIP, free).String())
		if err == nil {
			l.Close()
		}
		return err
	})
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("binding the planned port: %v, want EADDRINUSE", err)
	}

	// With the last port taken too, Plan gives up.
	err = lab.Client.Do(func(ns.NetNS) error {
		_, err := Plan(Spec{Kind: TCP, Dst: probetest.ServerIP, DstPort: probetest.TCPPort,
			UniqueIn: []string{lab.Router.Path()}})
		return err
	})
	if err == nil {
		t.Error("Plan with no free port succeeded, want an error")
	}
}
