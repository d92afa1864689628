// Package testns makes throwaway network namespaces for tests. They are
// named and made with `ip netns add`, so that commands run by the tests
// (`ip -n`, `ip netns exec`, iptables inside them) find them under
// /run/netns, and they start with their loopback up. (The plugins'
// testutils.NewNS would end an OS thread of the test process, and with it
// every child started from that thread with a parent-death signal, such as
// a test API server.)
package testns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

var count atomic.Int64

// Make makes a namespace named prefix followed by the process ID and a
// counter, so that a leftover one tells which test run made it.
func Make(prefix string) (ns.NetNS, error) {
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), count.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	n, err := ns.GetNS(filepath.Join("/run/netns", name))
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		return nil, fmt.Errorf("opening netns %s: %w", name, err)
	}
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, errors.Join(fmt.Errorf("setting lo up in %s: %w: %s", name, err, out), Remove(n))
	}
	return n, nil
}

// Remove closes n and deletes it: its links, rules and sockets go with it.
func Remove(n ns.NetNS) error {
	name := Name(n)
	closeErr := n.Close()
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, out)
	}
	if closeErr != nil {
		return fmt.Errorf("closing netns %s: %w", name, closeErr)
	}
	return nil
}

// New makes a namespace as Make does and removes it when t ends; either
// failing fails t.
func New(t testing.TB, prefix string) ns.NetNS {
	t.Helper()
	n, err := Make(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Remove(n); err != nil {
			t.Error(err)
		}
	})
	return n
}

// Name is the name of a namespace Make made, as `ip netns` knows it.
func Name(n ns.NetNS) string { return filepath.Base(n.Path()) }
