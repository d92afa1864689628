package engine

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
	"github.com/kubectl-nettrace/nettrace/trace/render"
)

// backends are the iptables backends the rules are loaded with.
var backends = []string{"legacy", "nft"}

// table renders the path as `kubectl nettrace node` prints it by default,
// with the client's port, which is random, written PORT.
func table(t *testing.T, p trace.Path) string {
	t.Helper()
	var b bytes.Buffer
	if err := render.Render(&b, p, render.Table, render.Options{}); err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(int(p.Flow.SrcPort))
	return strings.ReplaceAll(b.String(), ":"+port+" ", ":PORT ")
}

// checkTable compares the table of a path with the expected one.
func checkTable(t *testing.T, p trace.Path, want string) {
	t.Helper()
	if got := table(t, p); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// tcpFlow is the flow from the address src to the address and port dst.
func tcpFlow(src, dst string) trace.Flow {
	d := netip.MustParseAddrPort(dst)
	return trace.Flow{Proto: trace.TCP, Src: addr(src), Dst: d.Addr(), DstPort: d.Port()}
}

// request is a trace of flow on the cluster's node.
func request(c *enginetest.Cluster, flow trace.Flow, mode Mode, timeout time.Duration) Request {
	return Request{Node: c.Node.Name, Netns: c.Node.Netns.Path(), Flow: flow, Mode: mode, Timeout: timeout}
}

// progress collects a trace's progress lines and says when it waits for
// live traffic.
type progress struct {
	t       *testing.T
	mu      sync.Mutex
	lines   []string
	once    sync.Once
	waiting chan struct{}
}

func newProgress(t *testing.T) *progress { return &progress{t: t, waiting: make(chan struct{})} }

func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := strings.TrimSpace(string(b))
	p.lines = append(p.lines, line)
	if strings.HasPrefix(line, "waiting up to") {
		p.once.Do(func() { close(p.waiting) })
	}
	return len(b), nil
}

// traceLive runs a live trace of flow and, once it waits, lets the client
// connect to dst.
func traceLive(t *testing.T, c *enginetest.Cluster, flow trace.Flow, dst string) trace.Path {
	t.Helper()
	req := request(c, flow, Live, 20*time.Second)
	prog := newProgress(t)
	req.Progress = prog
	type result struct {
		path trace.Path
		err  error
	}
	done := make(chan result, 1)
	go func() {
		path, err := Trace(context.Background(), req)
		done <- result{path, err}
	}()
	select {
	case <-prog.waiting:
	case r := <-done:
		t.Fatalf("live trace ended before waiting: %v", r.err)
	}
	if err := c.Client.Dial(context.Background(), dst); err != nil {
		t.Fatalf("connecting to %s: %v", dst, err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.path
}

// clientARP is the client resolving its gateway, 169.254.1.1, which the
// node answers by proxy ARP. Both ends of the client's veth are captured
// inbound only: the request shows on the host's end, the reply on the pod's.
const clientARP = `[k8s-w1] calia1b2c3d4e5f in → ARP who-has 169.254.1.1 tell 172.16.1.10
[k8s-w1] pod 172.16.1.10 eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
`

// clusterIPPath is a connection from the client to the service: kube-proxy's
// rules pick the server and DNAT, conntrack records it, Calico's forward
// rule accepts, the server's namespace (watched as the DNAT's destination
// on this node) shows the delivery, and the SYN-ACK comes back with the
// DNAT undone.
const clusterIPPath = clientARP + `[k8s-w1] calia1b2c3d4e5f in → tcp 172.16.1.10:PORT > 10.96.0.100:80 S ttl 64
[k8s-w1] nat PREROUTING #1 "kubernetes service portals" → KUBE-SERVICES #1 "default/web cluster IP" → KUBE-SVC-2VLBFIULZRMG6NS3 #2 "default/web -> 172.16.1.11:80" → KUBE-SEP-TOJ6KBVFMXNEZ7KU #2 "default/web" DNAT 10.96.0.100:80 → 172.16.1.11:80
[k8s-w1] route 172.16.1.11 dev cali0f1e2d3c4b5 scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #3 "from workload" ACCEPT
[k8s-w1] nat POSTROUTING #1 "kubernetes postrouting rules" → KUBE-POSTROUTING #1 RETURN → POSTROUTING policy ACCEPT
[k8s-w1] pod 172.16.1.11 eth0 in → ARP who-has 172.16.1.11 tell 192.168.10.101
[k8s-w1] cali0f1e2d3c4b5 in → ARP 172.16.1.11 is-at 0a:58:ac:10:01:0b
[k8s-w1] pod 172.16.1.11 eth0 in → tcp 172.16.1.10:PORT > 172.16.1.11:80 S ttl 63
[k8s-w1] pod 172.16.1.11 eth0 → delivered
reply
[k8s-w1] cali0f1e2d3c4b5 in → ARP who-has 169.254.1.1 tell 172.16.1.11
[k8s-w1] pod 172.16.1.11 eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w1] cali0f1e2d3c4b5 in → tcp 172.16.1.11:80 > 172.16.1.10:PORT S. ttl 64
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #3 "from workload" ACCEPT
[k8s-w1] pod 172.16.1.10 eth0 in → tcp 10.96.0.100:80 > 172.16.1.10:PORT S. ttl 63
`

// reversePath is a connection the other way, from the server to the
// client pod's own address: no NAT, and the client's namespace, watched as
// the destination's, shows the delivery.
const reversePath = `[k8s-w1] cali0f1e2d3c4b5 in → ARP who-has 169.254.1.1 tell 172.16.1.11
[k8s-w1] pod 172.16.1.11 eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w1] cali0f1e2d3c4b5 in → tcp 172.16.1.11:PORT > 172.16.1.10:80 S ttl 64
[k8s-w1] nat PREROUTING #1 "kubernetes service portals" → KUBE-SERVICES return → PREROUTING policy ACCEPT
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #3 "from workload" ACCEPT
[k8s-w1] nat POSTROUTING #1 "kubernetes postrouting rules" → KUBE-POSTROUTING #1 RETURN → POSTROUTING policy ACCEPT
[k8s-w1] pod 172.16.1.10 eth0 in → ARP who-has 172.16.1.10 tell 192.168.10.101
[k8s-w1] calia1b2c3d4e5f in → ARP 172.16.1.10 is-at 0a:58:ac:10:01:0a
[k8s-w1] pod 172.16.1.10 eth0 in → tcp 172.16.1.11:PORT > 172.16.1.10:80 S ttl 63
[k8s-w1] pod 172.16.1.10 eth0 → delivered
reply
[k8s-w1] calia1b2c3d4e5f in → ARP who-has 169.254.1.1 tell 172.16.1.10
[k8s-w1] pod 172.16.1.10 eth0 in → ARP 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)
[k8s-w1] calia1b2c3d4e5f in → tcp 172.16.1.10:80 > 172.16.1.11:PORT S. ttl 64
[k8s-w1] route 172.16.1.11 dev cali0f1e2d3c4b5 scope link (lookup)
[k8s-w1] filter FORWARD #1 → cali-FORWARD #3 "from workload" ACCEPT
[k8s-w1] pod 172.16.1.11 eth0 in → tcp 172.16.1.10:80 > 172.16.1.11:PORT S. ttl 63
verdict: replied: SYN-ACK
`

// TestTrace traces on a node with kube-proxy's and Calico's rules, loaded
// with each iptables backend: a probe and live traffic to a ClusterIP,
// and a probe the other way, pod to pod. It checks every line of the
// table and that the node's rulesets and nf_log binding are as before.
func TestTrace(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, c *enginetest.Cluster) trace.Path
		want string
	}{
		{"probe to a ClusterIP", func(t *testing.T, c *enginetest.Cluster) trace.Path {
			path, err := Trace(context.Background(), request(c, tcpFlow(enginetest.ClientIP, enginetest.ServiceAddr), Probe, 5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			return path
		}, clusterIPPath + "verdict: replied: SYN-ACK\n"},
		{"live to a ClusterIP", func(t *testing.T, c *enginetest.Cluster) trace.Path {
			return traceLive(t, c, tcpFlow(enginetest.ClientIP, enginetest.ServiceAddr), enginetest.ServiceAddr)
		}, clusterIPPath + "verdict: replied: the reply reached 172.16.1.10\n"},
		{"probe from the server to the client pod", func(t *testing.T, c *enginetest.Cluster) trace.Path {
			path, err := Trace(context.Background(), request(c, tcpFlow(enginetest.ServerIP, enginetest.ClientIP+":80"), Probe, 5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			return path
		}, reversePath},
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					c := enginetest.NewCluster(t, backend)
					before := enginetest.NetfilterState(t, c.Node.Netns)
					path := tc.run(t, c)
					checkTable(t, path, tc.want)
					if after := enginetest.NetfilterState(t, c.Node.Netns); after != before {
						t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
					}
				})
			}
		})
	}
}

// blockedPath is the client's SYN to the server's port up to the rule in
// cali-FORWARD that stops it.
func blockedPath(port, rule string) string {
	return clientARP + `[k8s-w1] calia1b2c3d4e5f in → tcp 172.16.1.10:PORT > 172.16.1.11:` + port + ` S ttl 64
[k8s-w1] nat PREROUTING #1 "kubernetes service portals" → KUBE-SERVICES return → PREROUTING policy ACCEPT
[k8s-w1] route 172.16.1.11 dev cali0f1e2d3c4b5 scope link (lookup)
[k8s-w1] filter FORWARD #1 → ` + rule + "\n"
}

// rejectedPath is the SYN to port 81, rejected with a TCP reset that the
// node sends from the server's address.
var rejectedPath = blockedPath("81", `cali-FORWARD #1 "policy default/deny-81" REJECT`) + `reply
[k8s-w1] filter OUTPUT policy ACCEPT
[k8s-w1] route 172.16.1.10 dev calia1b2c3d4e5f scope link (lookup)
[k8s-w1] nat POSTROUTING #1 "kubernetes postrouting rules" → KUBE-POSTROUTING #1 RETURN → POSTROUTING policy ACCEPT
[k8s-w1] pod 172.16.1.10 eth0 in → tcp 172.16.1.11:81 > 172.16.1.10:PORT R. ttl 64
verdict: dropped at [k8s-w1] filter cali-FORWARD #1 REJECT: policy default/deny-81
`

// droppedPath is the SYN to port 82, dropped without an answer.
var droppedPath = blockedPath("82", `cali-FORWARD #2 "policy default/drop-82" DROP`) +
	"verdict: dropped at [k8s-w1] filter cali-FORWARD #2 DROP: policy default/drop-82\n"

// TestTraceDrop traces a probe that a Calico policy rule rejects (port 81,
// REJECT with a TCP reset) and one that it drops (port 82): the verdict
// names the rule and gives its comment as the reason.
func TestTraceDrop(t *testing.T) {
	cases := []struct {
		name, dst string
		timeout   time.Duration
		want      string
	}{
		// The timeout of the dropped probe ends before TCP's first
		// retransmission, after one second.
		{"reject", enginetest.ServerIP + ":81", 5 * time.Second, rejectedPath},
		{"drop", enginetest.ServerIP + ":82", 700 * time.Millisecond, droppedPath},
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					c := enginetest.NewCluster(t, backend)
					before := enginetest.NetfilterState(t, c.Node.Netns)
					path, err := Trace(context.Background(), request(c, tcpFlow(enginetest.ClientIP, tc.dst), Probe, tc.timeout))
					if err != nil {
						t.Fatal(err)
					}
					checkTable(t, path, tc.want)
					if after := enginetest.NetfilterState(t, c.Node.Netns); after != before {
						t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
					}
				})
			}
		})
	}
}

// TestTraceInvalid checks that requests the engine cannot trace fail with
// errors that match ErrInvalid, before anything is armed.
func TestTraceInvalid(t *testing.T) {
	c := enginetest.NewCluster(t, "legacy")
	before := enginetest.NetfilterState(t, c.Node.Netns)
	cases := []struct {
		name string
		flow trace.Flow
		want string
		is   error
	}{
		{"not a pod", tcpFlow("172.16.9.9", enginetest.ServiceAddr),
			"172.16.9.9 is not a pod on this node: no route via a cali* interface (the node routes it via eth0)", nil},
		{"the node's own address", tcpFlow(enginetest.NodeIP, enginetest.ServiceAddr),
			"192.168.10.101 is not a pod on this node: no route via a cali* interface (the node routes it via lo)", nil},
		{"IPv6", trace.Flow{Proto: trace.TCP, Src: addr("fd00::1"), Dst: addr("fd00::2"), DstPort: 80},
			"IPv6 is not supported yet", ErrIPv6},
		{"no port", trace.Flow{Proto: trace.UDP, Src: addr(enginetest.ClientIP), Dst: addr(enginetest.ServerIP)},
			"tracing udp to 172.16.1.11 needs a destination port", nil},
		{"icmp with a port", trace.Flow{Proto: trace.ICMP, Src: addr(enginetest.ClientIP), Dst: addr(enginetest.ServerIP), DstPort: 80},
			"icmp has no port: trace 172.16.1.11 without :80", nil},
		{"unknown protocol", trace.Flow{Proto: "sctp", Src: addr(enginetest.ClientIP), Dst: addr(enginetest.ServerIP), DstPort: 80},
			`cannot trace protocol "sctp": want tcp, udp or icmp`, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Trace(context.Background(), request(c, tc.flow, Probe, time.Second))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not match ErrInvalid", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v does not match %v", err, tc.is)
			}
		})
	}
	t.Run("no such netns", func(t *testing.T) {
		req := request(c, tcpFlow(enginetest.ClientIP, enginetest.ServiceAddr), Probe, time.Second)
		req.Netns = "/run/netns/" + enginetest.NetnsPrefix + "missing"
		if _, err := Trace(context.Background(), req); !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v, want one matching ErrInvalid", err)
		}
	})
	if after := enginetest.NetfilterState(t, c.Node.Netns); after != before {
		t.Errorf("the node's netfilter state changed:\n%s\nbefore:\n%s", after, before)
	}
}

// TestLiveAfterEarlierConnection starts a live trace after the client
// connected to the service once: conntrack still holds that connection,
// which the session's dump reports, but only a new packet starts the live
// flow. None comes, so the trace ends at its timeout with nothing seen.
func TestLiveAfterEarlierConnection(t *testing.T) {
	c := enginetest.NewCluster(t, "legacy")
	if err := c.Client.Dial(context.Background(), enginetest.ServiceAddr); err != nil {
		t.Fatal(err)
	}
	path, err := Trace(context.Background(), request(c, tcpFlow(enginetest.ClientIP, enginetest.ServiceAddr), Live, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	checkTable(t, path, "verdict: no-answer: nothing of the request was seen (no packet of tcp 172.16.1.10 > 10.96.0.100:80 within 1s)\n")
}
