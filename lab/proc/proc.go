// Package proc starts and stops the lab's long-running processes. Each one
// runs inside a named network namespace (entered with nsenter, so that it
// keeps the host's mount namespace and the netns it creates are visible to
// everyone), writes its output to a log file, and is recorded in a pid file
// so that a later `down` can stop it even when the process that started it
// is gone.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spec describes one process.
type Spec struct {
	// Name identifies the process; its pid file is Name.pid in the run directory.
	Name string
	// Netns is the named network namespace to run in; empty means the caller's.
	Netns string
	// Argv is the command and its arguments.
	Argv []string
	// Env is added to the inherited environment.
	Env []string
	// Log is the file that receives stdout and stderr.
	Log string
	// Detach puts the process in a session of its own so that it outlives
	// its starter. When false, the process is killed when its starter dies.
	Detach bool
}

// LabEnv marks every detached process (the lab's), so that leftovers can be
// found by their environment even without pid files.
const LabEnv = "NETTRACE_LAB=1"

// Start starts s and records its pid in runDir. It returns the process's pid.
func Start(runDir string, s Spec) (int, error) {
	argv := s.Argv
	if s.Netns != "" {
		argv = append([]string{"nsenter", "--net=/run/netns/" + s.Netns, "--"}, argv...)
	}
	if err := os.MkdirAll(filepath.Dir(s.Log), 0o755); err != nil {
		return 0, fmt.Errorf("creating log directory for %s: %w", s.Name, err)
	}
	log, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("opening log for %s: %w", s.Name, err)
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), s.Env...)
	if s.Detach {
		// Only the lab's own processes carry the marker, so that `down`
		// never kills the throwaway control planes of tests.
		cmd.Env = append(cmd.Env, LabEnv)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: s.Detach}
	if !s.Detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", s.Name, err)
	}
	pid := cmd.Process.Pid
	if s.Detach {
		// The child is reparented to init when we exit; release it here so
		// the runtime does not keep a handle on it.
		_ = cmd.Process.Release()
	} else {
		go cmd.Wait() //nolint:errcheck // reaped for its exit status only
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return pid, fmt.Errorf("creating run directory: %w", err)
	}
	if err := os.WriteFile(pidFile(runDir, s.Name), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return pid, fmt.Errorf("writing pid file of %s: %w", s.Name, err)
	}
	return pid, nil
}

// Running reports whether the process recorded under name in runDir is alive.
func Running(runDir, name string) (int, bool) {
	pid, err := readPid(runDir, name)
	if err != nil {
		return 0, false
	}
	return pid, Alive(pid)
}

// Stop stops the process recorded under name in runDir: SIGTERM, then
// SIGKILL after grace. A missing or dead process is not an error.
func Stop(runDir, name string, grace time.Duration) error {
	pid, err := readPid(runDir, name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	Kill([]int{pid}, grace)
	if err := os.Remove(pidFile(runDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing pid file of %s: %w", name, err)
	}
	return nil
}

// Kill sends SIGTERM to pids, waits up to grace for them to exit, then sends
// SIGKILL to those left.
func Kill(pids []int, grace time.Duration) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		left := 0
		for _, pid := range pids {
			if Alive(pid) {
				left++
			}
		}
		if left == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// InNetns lists the processes whose network namespace is the one at path
// (for example /run/netns/NAME).
func InNetns(path string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(path, &want); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return scan(func(pid int) bool {
		var st syscall.Stat_t
		err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st)
		return err == nil && st.Ino == want.Ino && st.Dev == want.Dev
	})
}

// Marked lists the processes that carry LabEnv in their environment.
func Marked() ([]int, error) {
	marker := []byte(LabEnv)
	self := os.Getpid()
	return scan(func(pid int) bool {
		if pid == self {
			return false
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			return false
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, marker) {
				return true
			}
		}
		return false
	})
}

func scan(match func(pid int) bool) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if match(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	// A zombie still answers signal 0; read its state to tell.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func pidFile(runDir, name string) string { return filepath.Join(runDir, name+".pid") }

func readPid(runDir, name string) (int, error) {
	b, err := os.ReadFile(pidFile(runDir, name))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file of %s: %w", name, err)
	}
	return pid, nil
}
