package capture

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// netns is a throwaway network namespace, removed with everything in it
// when the test ends.
type netns struct {
	ns.NetNS
	name string
}

func newNetns(t *testing.T) netns {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("removing netns: %v", err)
		}
	})
	return netns{NetNS: n, name: filepath.Base(n.Path())}
}

// ip runs `ip -n <netns> args...`.
func (n netns) ip(t *testing.T, args ...string) {
	t.Helper()
	n.run(t, "ip", append([]string{"-n", n.name}, args...)...)
}

// exec runs a command inside the netns.
func (n netns) exec(t *testing.T, cmd ...string) {
	t.Helper()
	n.run(t, "ip", append([]string{"netns", "exec", n.name}, cmd...)...)
}

func (n netns) run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// do runs f inside the netns on a locked thread.
func (n netns) do(t *testing.T, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// vethPair creates two netns joined by a veth pair: a0 in a, b0 in b, with
// the given addresses (prefix notation), up.
func vethPair(t *testing.T, addrA, addrB string) (a, b netns) {
	t.Helper()
	a, b = newNetns(t), newNetns(t)
	a.ip(t, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b.name)
	a.ip(t, "addr", "add", addrA, "dev", "a0")
	b.ip(t, "addr", "add", addrB, "dev", "b0")
	a.ip(t, "link", "set", "a0", "up")
	b.ip(t, "link", "set", "b0", "up")
	return a, b
}

// recorder collects the hops a capture emits.
type recorder struct {
	mu   sync.Mutex
	hops []trace.Hop
}

func (r *recorder) emit(h trace.Hop) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hops = append(r.hops, h)
}

func (r *recorder) all() []trace.Hop {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]trace.Hop(nil), r.hops...)
}

// awaitPackets waits, at most five seconds, until r holds n packets of
// the flow: a packet sent on one end of a veth reaches the other end's
// capture a moment later, through the receiving CPU's backlog.
func (r *recorder) awaitPackets(n int) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		seen := 0
		for _, h := range r.all() {
			if h.Kind == trace.HopInterface {
				seen++
			}
		}
		if seen >= n {
			return
		}
	}
}

// startCapture opens and arms a capture inside n; it is closed at the end
// of the test if the test does not close it first.
func startCapture(t *testing.T, n netns, cfg Config) (*Capture, *recorder) {
	t.Helper()
	var c *Capture
	n.do(t, func() (err error) {
		c, err = Open(cfg)
		return err
	})
	t.Cleanup(func() { c.Close() })
	rec := &recorder{}
	if err := c.Arm(context.Background(), rec.emit); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	return c, rec
}

// closeCapture closes c and fails on error or loss.
func closeCapture(t *testing.T, c *Capture) {
	t.Helper()
	loss, err := c.Close()
	if err != nil || len(loss) != 0 {
		t.Fatalf("Close: %v, lost %+v", err, loss)
	}
}

// checkLabels checks the labels and times the capture gave the hops.
func checkLabels(t *testing.T, hops []trace.Hop, cfg Config, from, to time.Time) {
	t.Helper()
	for _, h := range hops {
		if h.Node != cfg.Node || h.Netns != cfg.Netns || h.Iface != cfg.Iface || h.Source != "capture" {
			t.Errorf("hop labelled %q %q %q %q, want %q %q %q capture", h.Node, h.Netns, h.Iface, h.Source,
				cfg.Node, cfg.Netns, cfg.Iface)
		}
		if h.Time.Before(from) || h.Time.After(to) {
			t.Errorf("hop time %v outside the test's %v..%v", h.Time, from, to)
		}
	}
}
