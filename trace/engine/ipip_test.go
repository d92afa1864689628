package engine

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/dataplane/tunnel"
	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/correlate"
	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
)

// calicoForward is the forward rule of the tunnel test's nodes.
const calicoForward = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:cali-FORWARD - [0:0]
-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD
-A cali-FORWARD -i cali+ -m comment --comment "from workload" -j ACCEPT
-A cali-FORWARD -o cali+ -m comment --comment "to workload" -j ACCEPT
COMMIT
`

// startIPIP runs the reference dataplane's IPIP tunnel on each node, in
// userspace since the kernel has no ipip module, with one block per node.
func startIPIP(t *testing.T, nodes ...*enginetest.Node) {
	t.Helper()
	var blocks []tunnel.Block
	for i, n := range nodes {
		blocks = append(blocks, tunnel.Block{
			CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(i + 1), 0}), 24), Node: n.Name, NodeIP: n.IP})
	}
	for i, n := range nodes {
		var dp *tunnel.Dataplane
		n.Netns.In(t, func() error {
			var err error
			dp, err = tunnel.New(tunnel.Node{Name: n.Name, IP: n.IP, Interface: "eth0",
				TunnelAddr: blocks[i].CIDR.Addr(), Mode: tunnel.IPIP})
			if err != nil {
				return err
			}
			return dp.Sync(blocks)
		})
		t.Cleanup(func() {
			if err := dp.Close(); err != nil {
				t.Errorf("closing the tunnel of %s: %v", n.Name, err)
			}
		})
	}
}

// ipipPath is a connection from a pod on k8s-w1 to a pod on k8s-w2 through
// the IPIP tunnel: the inner packet is seen on tunl0, the outer on each
// eth0, encapsulated on one node and decapsulated on the other, both ways.
const ipipPath = `[k8s-w1] default/client eth0 out → ARP who-has 169.254.1.1 tell 172.16.1.10
[k8s-w1] calia1b2c3d4e5f in → ARP who-has 169.254.1.1 tell 172.16.1.10
[k8s-w1] calia1b2c3d4e5f out → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w1] default/client eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w1] default/client eth0 out → tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 64
[k8s-w1] calia1b2c3d4e5f in → tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 64
[k8s-w1] route 172.16.2.0/24 via 192.168.10.102 dev tunl0 proto bird onlink (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #1 "from workload" ACCEPT
[k8s-w1] tunl0 out → tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 63
[k8s-w1] eth0 out → ARP who-has 192.168.10.102 tell 192.168.10.101
[k8s-w2] eth0 in → ARP who-has 192.168.10.102 tell 192.168.10.101
[k8s-w2] eth0 out → ARP 192.168.10.102 is-at 02:00:c0:a8:0a:66
[k8s-w1] eth0 in → ARP 192.168.10.102 is-at 02:00:c0:a8:0a:66
[k8s-w1] tunl0 IPIP 192.168.10.101 → 192.168.10.102 (sent wrapped on eth0)
[k8s-w1] eth0 out → ipip 192.168.10.101 > 192.168.10.102: tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 63
[k8s-w2] eth0 in → ipip 192.168.10.101 > 192.168.10.102: tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 63
[k8s-w2] tunl0 IPIP decap 192.168.10.101 → 192.168.10.102 (received wrapped on eth0)
[k8s-w2] tunl0 in → tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 63
[k8s-w2] route 172.16.2.10 dev cali2b3c4d5e6f7 scope link (lookup)
[k8s-w2] filter FORWARD #1 → cali-FORWARD #2 "to workload" ACCEPT
[k8s-w2] cali2b3c4d5e6f7 out → ARP who-has 172.16.2.10 tell 192.168.10.102
[k8s-w2] default/server eth0 in → ARP who-has 172.16.2.10 tell 192.168.10.102
[k8s-w2] default/server eth0 out → ARP 172.16.2.10 is-at 0a:58:ac:10:02:0a
[k8s-w2] cali2b3c4d5e6f7 in → ARP 172.16.2.10 is-at 0a:58:ac:10:02:0a
[k8s-w2] cali2b3c4d5e6f7 out → tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 62
[k8s-w2] default/server eth0 in → tcp 172.16.1.10:PORT > 172.16.2.10:80 S ttl 62
[k8s-w2] default/server eth0 → delivered
reply
[k8s-w2] default/server eth0 out → ARP who-has 169.254.1.1 tell 172.16.2.10
[k8s-w2] cali2b3c4d5e6f7 in → ARP who-has 169.254.1.1 tell 172.16.2.10
[k8s-w2] cali2b3c4d5e6f7 out → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w2] default/server eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w2] default/server eth0 out → tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 64
[k8s-w2] cali2b3c4d5e6f7 in → tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 64
[k8s-w2] route 172.16.1.0/24 via 192.168.10.101 dev tunl0 proto bird onlink (lookup)
[k8s-w2] filter FORWARD #1 → cali-FORWARD #1 "from workload" ACCEPT
[k8s-w2] tunl0 out → tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 63
[k8s-w2] tunl0 IPIP 192.168.10.102 → 192.168.10.101 (sent wrapped on eth0)
[k8s-w2] eth0 out → ipip 192.168.10.102 > 192.168.10.101: tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 63
[k8s-w1] eth0 in → ipip 192.168.10.102 > 192.168.10.101: tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 63
[k8s-w1] tunl0 IPIP decap 192.168.10.102 → 192.168.10.101 (received wrapped on eth0)
[k8s-w1] tunl0 in → tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 63
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #2 "to workload" ACCEPT
[k8s-w1] calia1b2c3d4e5f out → tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 62
[k8s-w1] default/client eth0 in → tcp 172.16.2.10:80 > 172.16.1.10:PORT S. ttl 62
verdict: replied: SYN-ACK
`

// TestSessionsIPIP runs a Session on each of two nodes joined by the
// reference dataplane's userspace IPIP tunnel, sends one probe from a pod
// on the first to a pod on the second, and correlates the hops of both
// nodes into one path.
func TestSessionsIPIP(t *testing.T) {
	w1, w2 := enginetest.NewNode(t, "k8s-w1", "192.168.10.101"), enginetest.NewNode(t, "k8s-w2", "192.168.10.102")
	enginetest.Connect(t, w1, w2)
	client := w1.AddPod(t, "172.16.1.10", enginetest.ClientVeth)
	server := w2.AddPod(t, "172.16.2.10", "cali2b3c4d5e6f7")
	server.Listen(t, 80)
	for _, n := range []*enginetest.Node{w1, w2} {
		n.Netns.RunInput(t, calicoForward, "iptables-legacy-restore")
	}
	startIPIP(t, w1, w2)
	before := []string{enginetest.NetfilterState(t, w1.Netns), enginetest.NetfilterState(t, w2.Netns)}

	var pr *probe.Probe
	client.Netns.In(t, func() error {
		var err error
		pr, err = probe.Plan(probe.Spec{Kind: probe.TCP, Dst: server.IP, DstPort: 80, Timeout: 5 * time.Second})
		return err
	})
	flow := pr.Flow()
	match := trace.Match{Proto: trace.TCP, Ports: []uint16{flow.SrcPort}}
	ctx := context.Background()
	var sessions []*Session
	for _, n := range []struct {
		node  *enginetest.Node
		pod   *enginetest.Pod
		label string
	}{{w1, client, "default/client"}, {w2, server, "default/server"}} {
		s, err := Start(ctx, Config{Node: n.node.Name, Netns: n.node.Netns.Path(), Match: match, Flow: flow,
			Watch: []Watch{{Path: n.pod.Netns.Path(), Label: n.label}}, PathInterfaces: []string{n.pod.Veth}})
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	r, err := pr.Send(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in := correlate.Input{
		Flow:   flow,
		Nodes:  []string{w1.Name, w2.Name},
		Answer: &correlate.Answer{Result: r.Answer.Result(), Reply: r.Reply},
		Destinations: []correlate.Endpoint{{Name: "default/server", Addr: server.IP, Node: w2.Name,
			Netns: "default/server", HostVeth: server.Veth}},
	}
	for _, s := range sessions {
		s.Settle(settleQuiet, settleLimit)
		c, err := s.Stop(flow)
		if err != nil {
			t.Fatal(err)
		}
		in.Hops = append(in.Hops, c.Hops...)
		in.Lost = append(in.Lost, c.Lost...)
	}
	checkTable(t, correlate.Correlate(in), ipipPath)
	for i, n := range []*enginetest.Node{w1, w2} {
		if after := enginetest.NetfilterState(t, n.Netns); after != before[i] {
			t.Errorf("the netfilter state of %s changed:\n%s\nbefore:\n%s", n.Name, after, before[i])
		}
	}
}
