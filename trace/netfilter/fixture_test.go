package netfilter

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/internal/testns"
	"github.com/kubectl-nettrace/nettrace/trace"
)

// testNetns is a throwaway network namespace, removed when the test ends.
type testNetns struct {
	ns   ns.NetNS
	name string
}

// testNetnsPrefix starts the names of the test's namespaces, so that a
// leftover one is easy to tell from other tests'.
const testNetnsPrefix = "nettrace-nf-test-"

var netnsCount atomic.Int32

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	n := testns.New(t, testNetnsPrefix)
	return &testNetns{ns: n, name: testns.Name(n)}
}

// run runs a command inside the namespace.
func (n *testNetns) run(stdin, name string, args ...string) (string, error) {
	var out []byte
	err := n.ns.Do(func(ns.NetNS) error {
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		var err error
		if out, err = cmd.Output(); err != nil {
			return fmt.Errorf("%s %v: %w: %s", name, args, err, stderr.String())
		}
		return nil
	})
	return string(out), err
}

func (n *testNetns) mustRun(t *testing.T, stdin, name string, args ...string) string {
	t.Helper()
	out, err := n.run(stdin, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// do runs fn on a thread inside the namespace.
func (n *testNetns) do(t *testing.T, fn func() error) {
	t.Helper()
	if err := n.ns.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// lab is a client, a router and a server, in three namespaces:
// client c0 10.1.0.2/24 — r0 10.1.0.1/24 router r1 10.2.0.1/24 — s0 server
// 10.2.0.2/24 and 10.2.0.3/24. The router forwards; its rules are the test's.
type lab struct {
	client, router, server *testNetns
}

var (
	clientIP  = net.ParseIP("10.1.0.2")
	serviceIP = "10.96.0.100"
	server1IP = "10.2.0.2"
	server2IP = "10.2.0.3"
)

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{client: newTestNetns(t), router: newTestNetns(t), server: newTestNetns(t)}
	r := l.router
	r.mustRun(t, "", "ip", "link", "add", "r0", "type", "veth", "peer", "name", "c0", "netns", l.client.name)
	r.mustRun(t, "", "ip", "link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", l.server.name)
	r.mustRun(t, "", "ip", "addr", "add", "10.1.0.1/24", "dev", "r0")
	r.mustRun(t, "", "ip", "addr", "add", "10.2.0.1/24", "dev", "r1")
	r.mustRun(t, "", "ip", "link", "set", "r0", "up")
	r.mustRun(t, "", "ip", "link", "set", "r1", "up")
	r.do(t, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) })
	c := l.client
	c.mustRun(t, "", "ip", "addr", "add", "10.1.0.2/24", "dev", "c0")
	c.mustRun(t, "", "ip", "link", "set", "c0", "up")
	c.mustRun(t, "", "ip", "route", "add", "default", "via", "10.1.0.1")
	s := l.server
	s.mustRun(t, "", "ip", "addr", "add", server1IP+"/24", "dev", "s0")
	s.mustRun(t, "", "ip", "addr", "add", server2IP+"/24", "dev", "s0")
	s.mustRun(t, "", "ip", "link", "set", "s0", "up")
	s.mustRun(t, "", "ip", "route", "add", "default", "via", "10.2.0.1")
	return l
}

// listen opens a TCP listener in the server namespace that completes
// handshakes and never sends data.
func (l *lab) listen(t *testing.T, port int) {
	t.Helper()
	l.server.do(t, func() error {
		ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return err
		}
		t.Cleanup(func() { ln.Close() })
		return nil
	})
}

// dial connects from the client namespace, from a fixed source port, and
// returns the connection or the dial error.
func (l *lab) dial(t *testing.T, srcPort int, dst string, timeout time.Duration) (*net.TCPConn, error) {
	t.Helper()
	var conn *net.TCPConn
	var dialErr error
	l.client.do(t, func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientIP, Port: srcPort}, Timeout: timeout}
		c, err := d.Dial("tcp4", dst)
		if err != nil {
			dialErr = err
			return nil
		}
		conn = c.(*net.TCPConn)
		return nil
	})
	return conn, dialErr
}

// freePort picks a source port for one test's flow.
var (
	portMu   sync.Mutex
	nextPort = 40000 + os.Getpid()%10000
)

func freePort() int {
	portMu.Lock()
	defer portMu.Unlock()
	nextPort++
	return nextPort
}

// collector gathers the hops a tracer emits.
type collector struct {
	mu   sync.Mutex
	hops []trace.Hop
}

func (c *collector) emit(h trace.Hop) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hops = append(c.hops, h)
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.hops)
}

// settle waits until no hop arrived for quiet, at most 5 seconds, and
// returns the hops.
func (c *collector) settle(quiet time.Duration) []trace.Hop {
	deadline := time.Now().Add(5 * time.Second)
	last := -1
	for time.Now().Before(deadline) {
		n := c.len()
		if n == last && n > 0 {
			break
		}
		last = n
		time.Sleep(quiet)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]trace.Hop(nil), c.hops...)
}

// arm arms a tracer in n and closes it when the test ends, if the test did
// not.
func arm(t *testing.T, n *testNetns, opts Options, emit func(trace.Hop)) *Tracer {
	t.Helper()
	tr, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	n.do(t, func() error { return tr.Arm(context.Background(), emit) })
	t.Cleanup(func() {
		if _, err := tr.Close(); err != nil {
			t.Errorf("closing tracer: %v", err)
		}
	})
	return tr
}

// savedCounters and saveComments are what changes in iptables-save output
// between two identical rulesets.
var (
	savedCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	saveComments  = regexp.MustCompile(`(?m)^#.*\n`)
)

// netfilterState is everything the tracer may change in a namespace: the
// nf_log binding and both backends' rulesets.
func netfilterState(t *testing.T, n *testNetns) string {
	t.Helper()
	var nfLog []byte
	n.do(t, func() error {
		var err error
		nfLog, err = os.ReadFile(nfLogIPv4)
		return err
	})
	legacy := n.mustRun(t, "", "iptables-legacy-save")
	nftSave := n.mustRun(t, "", "iptables-nft-save")
	nft := n.mustRun(t, "", "nft", "--stateless", "list", "ruleset")
	clean := func(s string) string {
		return savedCounters.ReplaceAllString(saveComments.ReplaceAllString(s, ""), "[0:0]")
	}
	return fmt.Sprintf("nf_log/2: %s\n--- iptables-legacy-save\n%s--- iptables-nft-save\n%s--- nft list ruleset\n%s",
		strings.TrimSpace(string(nfLog)), clean(legacy), clean(nftSave), nft)
}

func addrs(ss ...string) []netip.Addr {
	var as []netip.Addr
	for _, s := range ss {
		as = append(as, netip.MustParseAddr(s))
	}
	return as
}
