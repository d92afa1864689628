package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// lockDir holds one lock file per node. Nodes of a lab share the host's
// filesystem, so the file is per node name, not per host.
const lockDir = "/run/nettrace-cni"

// lockNode serialises the plugin's commands on one node: the whole of ADD,
// so that a GC never releases the address of an ADD in progress, and the
// datastore part of DEL and GC, so that the node's writes to its blocks do
// not race each other. The lock is released by unlock, or by the kernel
// when the process dies.
func lockNode(ctx context.Context, node string) (unlock func(), err error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", lockDir, err)
	}
	path := lockPath(node)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the node lock: %w", err)
	}
	locked := make(chan error, 1)
	go func() { locked <- flock(f) }()
	select {
	case err := <-locked:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		return func() { f.Close() }, nil
	case <-ctx.Done():
		// The goroutine stays blocked in flock until the process, which
		// is about to report the error and exit, ends.
		return nil, fmt.Errorf("waiting for the node lock %s: %w", path, ctx.Err())
	}
}

// flock takes the exclusive lock on f, waiting for it.
func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// lockPath is the lock file of node.
func lockPath(node string) string {
	safe := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, node)
	return filepath.Join(lockDir, "ipam-"+safe+".lock")
}
