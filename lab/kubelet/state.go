package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// podRuntime is what the kubelet knows of one pod's sandbox and containers.
// It is saved as sandbox.json in the pod's directory, so that a restarted
// kubelet (or `nettrace-lab exec`) finds the netns and the processes.
type podRuntime struct {
	UID         types.UID  `json:"uid"`
	Namespace   string     `json:"namespace"`
	Name        string     `json:"name"`
	SandboxID   string     `json:"sandboxID"`
	Netns       string     `json:"netns"`
	HostNetwork bool       `json:"hostNetwork"`
	PodIP       netip.Addr `json:"podIP"`
	Created     time.Time  `json:"created"`
	// NetworkReady is set once CNI ADD succeeded.
	NetworkReady bool                         `json:"networkReady"`
	Containers   map[string]*containerRuntime `json:"containers"`
}

// containerRuntime is one container's process and history.
type containerRuntime struct {
	Name         string    `json:"name"`
	ID           string    `json:"id"`
	Image        string    `json:"image"`
	Pid          int       `json:"pid"`
	StartedAt    time.Time `json:"startedAt"`
	RestartCount int32     `json:"restartCount"`
	Ready        bool      `json:"ready"`
	// Waiting is set when the container cannot run: a reason such as
	// ErrImagePull or CrashLoopBackOff, with a message.
	Waiting        string `json:"waiting,omitempty"`
	WaitingMessage string `json:"waitingMessage,omitempty"`
	// LastExit is the last time the process ended.
	LastExit *exitRecord `json:"lastExit,omitempty"`
	// Running is true while the process lives.
	Running bool `json:"running"`
	// BackoffUntil is when a crashed container may start again.
	BackoffUntil time.Time `json:"backoffUntil"`
}

// exitRecord is how a container process ended.
type exitRecord struct {
	ExitCode   int32     `json:"exitCode"`
	Signal     string    `json:"signal,omitempty"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
}

// PodDir is the directory of one pod's files on a node.
func PodDir(nodeDir string, uid types.UID) string {
	return filepath.Join(nodeDir, "pods", string(uid))
}

func (k *Kubelet) podDir(uid types.UID) string { return PodDir(k.cfg.Dir, uid) }

// save writes pr to its pod directory. The caller holds k.mu.
func (k *Kubelet) save(pr *podRuntime) error {
	dir := k.podDir(pr.UID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating pod directory: %w", err)
	}
	b, err := json.MarshalIndent(pr, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "sandbox.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("saving sandbox state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, "sandbox.json"))
}

// Sandbox is the saved state of a pod, as `nettrace-lab exec` reads it.
type Sandbox struct {
	Netns      string
	Containers map[string]int // container name → pid
}

// LoadSandbox reads the saved state of the pod uid on the node whose
// directory is nodeDir.
func LoadSandbox(nodeDir string, uid types.UID) (*Sandbox, error) {
	pr, err := loadState(filepath.Join(PodDir(nodeDir, uid), "sandbox.json"))
	if err != nil {
		return nil, err
	}
	sb := &Sandbox{Netns: pr.Netns, Containers: map[string]int{}}
	for name, c := range pr.Containers {
		if c.Running {
			sb.Containers[name] = c.Pid
		}
	}
	return sb, nil
}

func loadState(path string) (*podRuntime, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pr := &podRuntime{}
	if err := json.Unmarshal(b, pr); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if pr.Containers == nil {
		pr.Containers = map[string]*containerRuntime{}
	}
	return pr, nil
}

// loadAll reads every saved sandbox of the node.
func (k *Kubelet) loadAll() ([]*podRuntime, error) {
	entries, err := os.ReadDir(filepath.Join(k.cfg.Dir, "pods"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing saved pods: %w", err)
	}
	var out []*podRuntime
	for _, e := range entries {
		pr, err := loadState(filepath.Join(k.cfg.Dir, "pods", e.Name(), "sandbox.json"))
		if errors.Is(err, os.ErrNotExist) {
			// A directory without state: a pod whose sandbox never got made.
			_ = os.RemoveAll(filepath.Join(k.cfg.Dir, "pods", e.Name()))
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, pr)
	}
	return out, nil
}
