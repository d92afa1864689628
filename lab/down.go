package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// Down removes the lab: every process it started (found by netns and by
// their environment marker, so that a crashed or SIGKILLed lab process is no
// obstacle), every netns and link, the /etc/netns files and the state
// directory. It works when the lab is half up and when it is already down.
func Down(stateDir string) error {
	pids, err := labProcesses()
	if err != nil {
		return err
	}
	proc.Kill(pids, 5*time.Second)
	// Containers may have been started while we listed: look again.
	if late, err := labProcesses(); err == nil && len(late) > 0 {
		proc.Kill(late, 2*time.Second)
	}
	errs := []error{Destroy()}
	if err := os.RemoveAll(stateDir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", stateDir, err))
	}
	return errors.Join(errs...)
}

// labProcesses lists every process inside a lab netns or marked as the
// lab's.
func labProcesses() ([]int, error) {
	seen := map[int]bool{}
	names, err := LabNetns()
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		pids, err := proc.InNetns(NetnsPath(name))
		if err != nil {
			continue // removed meanwhile
		}
		for _, p := range pids {
			seen[p] = true
		}
	}
	marked, err := proc.Marked()
	if err != nil {
		return nil, err
	}
	for _, p := range marked {
		seen[p] = true
	}
	delete(seen, os.Getpid())
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// NodeProcess is one long-running process of the lab, as `status` shows it.
type NodeProcess struct {
	Name    string
	Pid     int
	Running bool
}

// Stopped names the lab processes that are recorded but not running, with
// where their logs are, for error messages; it is empty when all run.
func (c *Config) Stopped() string {
	procs, err := c.Processes()
	if err != nil {
		return ""
	}
	var dead []string
	for _, p := range procs {
		if !p.Running {
			dead = append(dead, p.Name)
		}
	}
	if len(dead) == 0 {
		return ""
	}
	return fmt.Sprintf("; stopped: %s (logs under %s)", strings.Join(dead, ", "), c.StateDir)
}

// Processes lists the processes recorded in the lab's run directory.
func (c *Config) Processes() ([]NodeProcess, error) {
	var out []NodeProcess
	for _, dir := range []string{filepath.Join(c.StateDir, "run"), filepath.Join(c.ControlPlaneStateDir(), "run")} {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			name := e.Name()
			if filepath.Ext(name) != ".pid" {
				continue
			}
			name = name[:len(name)-len(".pid")]
			pid, ok := proc.Running(dir, name)
			out = append(out, NodeProcess{Name: name, Pid: pid, Running: ok})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
