package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// commandTimeout bounds every iptables or nft command the tracer runs.
const commandTimeout = 30 * time.Second

// netnsHandle runs commands and file operations in one network namespace,
// from whatever goroutine calls it: Close and the rule lookups of the event
// readers do not run on the thread the engine moved into the namespace.
type netnsHandle struct {
	ns ns.NetNS
}

// currentNetns returns a handle of the calling thread's network namespace.
func currentNetns() (*netnsHandle, error) {
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("opening the current network namespace: %w", err)
	}
	return &netnsHandle{ns: n}, nil
}

// run runs a command in the namespace with stdin as its input and returns
// its standard output.
func (h *netnsHandle) run(stdin, name string, args ...string) ([]byte, error) {
	var out []byte
	err := h.ns.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		var err error
		out, err = cmd.Output()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	return out, err
}

// commandMissing reports whether err says that a command is not installed.
func commandMissing(err error) bool {
	return errors.Is(err, exec.ErrNotFound)
}

// output runs a command without input; it is the ruleset.Runner of the
// namespace.
func (h *netnsHandle) output(name string, args ...string) ([]byte, error) {
	return h.run("", name, args...)
}

// do runs fn on a thread in the namespace.
func (h *netnsHandle) do(fn func() error) error {
	return h.ns.Do(func(ns.NetNS) error { return fn() })
}

// fd is the namespace's file descriptor, for sockets opened in it.
func (h *netnsHandle) fd() int { return int(h.ns.Fd()) }

// identity returns the namespace's inode, which names its state file, and
// its cookie, which unlike the inode is never reused by a later namespace.
func (h *netnsHandle) identity() (inode, cookie uint64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(h.fd(), &st); err != nil {
		return 0, 0, fmt.Errorf("reading network namespace inode: %w", err)
	}
	err = h.do(func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening a socket for the netns cookie: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return fmt.Errorf("reading the netns cookie: %w", err)
		}
		return nil
	})
	return st.Ino, cookie, err
}

func (h *netnsHandle) close() error { return h.ns.Close() }
