package conntrack

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	ct "github.com/ti-mo/conntrack"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// natEntry is a conntrack entry for a TCP flow from port sport that a
// service DNAT sent to 10.2.0.2:8080.
func natEntry(sport uint16) ct.Flow {
	f := ct.NewFlow(6, 0, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.96.0.10"), sport, 80, 60, 0)
	f.TupleReply.IP.SourceAddress = netip.MustParseAddr("10.2.0.2")
	f.TupleReply.Proto.SourcePort = 8080
	return f
}

// TestSourceCountsOverruns stalls the consumer of a source with a tiny
// socket buffer while the table churns: the overrun must be reported as a
// loss, and the matching entry created during it must still be reported,
// found by the dump that follows the overrun.
func TestSourceCountsOverruns(t *testing.T) {
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Close()
		if err := testutils.UnmountNS(netns); err != nil {
			t.Errorf("removing netns: %v", err)
		}
	})
	const first, second = 40001, 40002
	unblock := make(chan struct{})
	reported := make(chan trace.Hop, 10)
	src := New(Config{Node: "n", Match: trace.Match{Proto: trace.TCP, Ends: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:0")}}})
	src.readBuffer = 4096
	emit := func(h trace.Hop) {
		reported <- h
		<-unblock
	}

	err = netns.Do(func(ns.NetNS) error {
		if err := src.Arm(context.Background(), emit); err != nil {
			return err
		}
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Create(natEntry(first)); err != nil {
			return err
		}
		<-reported // the reader is now stuck in emit
		for port := uint16(1000); port < 3000; port++ {
			if err := c.Create(ct.NewFlow(17, 0, netip.MustParseAddr("10.9.0.1"),
				netip.MustParseAddr("10.9.0.2"), port, 53, 60, 0)); err != nil {
				return err
			}
		}
		return c.Create(natEntry(second))
	})
	if err != nil {
		close(unblock)
		t.Fatalf("arming and churning the table: %v", err)
	}
	close(unblock)
	select {
	case h := <-reported:
		if h.NAT == nil || h.NAT.Original.Src.Port() != second {
			t.Errorf("after the overrun, got %+v, want the DNAT of the entry from port %d", h, second)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the entry created during the overrun was never reported")
	}
	lost, err := src.Close()
	if err != nil {
		t.Errorf("Close: %v", err)
	}
	if len(lost) != 1 || lost[0].Count < 1 || lost[0].Source != "conntrack" || !strings.Contains(lost[0].Detail, "ENOBUFS") {
		t.Errorf("Close reported losses %+v, want one overrun loss", lost)
	}
}
