package netfilter

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// StateDir holds a state file per network namespace whose nf_log binding a
// session changed, so that the binding can be restored after the session
// was killed.
const StateDir = "/run/nettrace"

// nfLogIPv4 is the sysctl that names the logger of AF_INET packets, which
// ip_tables' TRACE writes to; nfLogNetlink routes them to nflog group 0.
const (
	nfLogIPv4    = "/proc/sys/net/netfilter/nf_log/2"
	nfLogNetlink = "nfnetlink_log"
)

// nfLogState is the state file of one network namespace.
type nfLogState struct {
	// Cookie identifies the namespace: its inode, in the file name, may be
	// reused once it is gone.
	Cookie uint64 `json:"netnsCookie"`
	// Previous is the logger bound before any session changed it, as the
	// sysctl reads ("nf_log_ipv4", "NONE" …).
	Previous string `json:"previous"`
	// Session is the tag of the session that holds the binding now.
	Session string `json:"session"`
}

// nfLogBinding changes and restores the nf_log binding of one namespace.
type nfLogBinding struct {
	netns  *netnsHandle
	inode  uint64
	cookie uint64
}

func newNfLogBinding(h *netnsHandle) (*nfLogBinding, error) {
	inode, cookie, err := h.identity()
	if err != nil {
		return nil, err
	}
	return &nfLogBinding{netns: h, inode: inode, cookie: cookie}, nil
}

func (b *nfLogBinding) statePath() string {
	return filepath.Join(StateDir, fmt.Sprintf("nflog-%d.json", b.inode))
}

// bind records the current binding, unless a dead session's state file
// already holds the one from before it, and binds nfnetlink_log.
func (b *nfLogBinding) bind(s Session) error {
	return withStateLock(func() error {
		st, found, err := b.readState()
		if err != nil {
			return err
		}
		if found {
			owner, ok := parseTag(st.Session)
			if ok && owner.ID != s.ID && owner.Alive() {
				return fmt.Errorf("nf_log of this network namespace is held by live session %s (pid %d)", owner.ID, owner.PID)
			}
		} else {
			prev, err := b.readSysctl()
			if err != nil {
				return err
			}
			st = nfLogState{Cookie: b.cookie, Previous: prev}
		}
		st.Session = s.Tag()
		if err := b.writeState(st); err != nil {
			return err
		}
		if err := b.writeSysctl(nfLogNetlink); err != nil {
			return errors.Join(err, os.Remove(b.statePath()))
		}
		return nil
	})
}

// restore puts back the binding recorded in the state file and removes the
// file, when restoreFor says so of the session that holds it. It reports the
// holder when it restored.
func (b *nfLogBinding) restore(restoreFor func(Session) bool) (Session, bool, error) {
	var (
		owner    Session
		restored bool
	)
	err := withStateLock(func() error {
		st, found, err := b.readState()
		if err != nil || !found {
			return err
		}
		owner, _ = parseTag(st.Session)
		if !restoreFor(owner) {
			return nil
		}
		if err := b.writeSysctl(st.Previous); err != nil {
			return err
		}
		restored = true
		if err := os.Remove(b.statePath()); err != nil {
			return fmt.Errorf("removing nf_log state file: %w", err)
		}
		return nil
	})
	return owner, restored, err
}

// readState reads the namespace's state file. A file left by an earlier
// namespace with the same inode is removed and reported as not found.
func (b *nfLogBinding) readState() (nfLogState, bool, error) {
	data, err := os.ReadFile(b.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nfLogState{}, false, nil
	}
	if err != nil {
		return nfLogState{}, false, fmt.Errorf("reading nf_log state: %w", err)
	}
	var st nfLogState
	if err := json.Unmarshal(data, &st); err != nil || st.Cookie != b.cookie {
		if err := os.Remove(b.statePath()); err != nil {
			return nfLogState{}, false, fmt.Errorf("removing stale nf_log state file: %w", err)
		}
		return nfLogState{}, false, nil
	}
	return st, true, nil
}

// writeState replaces the state file atomically.
func (b *nfLogBinding) writeState(st nfLogState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding nf_log state: %w", err)
	}
	tmp := b.statePath() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing nf_log state: %w", err)
	}
	if err := os.Rename(tmp, b.statePath()); err != nil {
		return fmt.Errorf("writing nf_log state: %w", err)
	}
	return nil
}

// readSysctl reads the namespace's AF_INET logger. The sysctl belongs to
// the namespace of the thread that opens it.
func (b *nfLogBinding) readSysctl() (string, error) {
	var v string
	err := b.netns.do(func() error {
		data, err := os.ReadFile(nfLogIPv4)
		if err != nil {
			return fmt.Errorf("reading nf_log binding: %w", err)
		}
		v = strings.TrimSpace(string(data))
		return nil
	})
	return v, err
}

func (b *nfLogBinding) writeSysctl(logger string) error {
	return b.netns.do(func() error {
		if err := os.WriteFile(nfLogIPv4, []byte(logger), 0o644); err != nil {
			return fmt.Errorf("binding nf_log for IPv4 to %s: %w", logger, err)
		}
		return nil
	})
}

// withStateLock runs fn holding an exclusive lock on the state directory.
func withStateLock(fn func() error) error {
	if err := os.MkdirAll(StateDir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	dir, err := os.Open(StateDir)
	if err != nil {
		return fmt.Errorf("opening state directory: %w", err)
	}
	defer dir.Close()
	if err := unix.Flock(int(dir.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking state directory: %w", err)
	}
	return fn()
}
