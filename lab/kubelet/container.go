package kubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// Restart backoff for crashing containers: doubling from 1 s, capped low so
// that the lab recovers quickly.
const (
	backoffInitial = time.Second
	backoffMax     = 20 * time.Second
)

// startContainer starts c's process in the pod's netns through
// `ip netns exec` (which bind-mounts the pod's resolv.conf, hosts and
// hostname) and `nettrace-lab container-init` (which gives it its own UTS
// namespace and /run, and mounts the service-account token).
func (k *Kubelet) startContainer(pod *corev1.Pod, pr *podRuntime, c *corev1.Container, cr *containerRuntime) error {
	argv, err := k.cfg.Images.Command(c)
	if err != nil {
		return err
	}
	secrets := ""
	if k.wantsToken(pod) {
		if secrets, err = k.writeToken(context.Background(), pod); err != nil {
			return err
		}
	}
	full := []string{"ip", "netns", "exec", pr.Netns, k.cfg.Images.LabBin, "container-init", "--hostname", pod.Name}
	if pod.Spec.HostNetwork {
		full[len(full)-1] = k.cfg.NodeName
	}
	if secrets != "" {
		full = append(full, "--service-account", secrets)
	}
	if c.WorkingDir != "" {
		full = append(full, "--workdir", c.WorkingDir)
	}
	full = append(append(full, "--"), argv...)

	logPath := filepath.Join(k.podDir(pod.UID), c.Name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening container log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Env = k.containerEnv(pod, pr, c)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A session of its own: the container outlives a kubelet restart, and
	// its whole process group is stopped together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting container %s: %w", c.Name, err)
	}
	id := make([]byte, 32)
	_, _ = rand.Read(id)
	cr.ID = hex.EncodeToString(id)
	cr.Pid = cmd.Process.Pid
	cr.StartedAt = time.Now()
	cr.Running = true
	cr.Waiting, cr.WaitingMessage = "", ""
	go k.reap(pod.UID, cr, cmd)
	return nil
}

// reap waits for a container process and records how it ended.
func (k *Kubelet) reap(uid types.UID, cr *containerRuntime, cmd *exec.Cmd) {
	err := cmd.Wait()
	exit := &exitRecord{FinishedAt: time.Now()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			exit.Signal = ws.Signal().String()
			exit.ExitCode = 128 + int32(ws.Signal())
		} else {
			exit.ExitCode = int32(ee.ExitCode())
		}
	}
	k.mu.Lock()
	if cr.Pid == cmd.Process.Pid {
		exit.StartedAt = cr.StartedAt
		cr.LastExit = exit
		cr.Running = false
		cr.Ready = false
		delay := backoffInitial << min(cr.RestartCount, 5)
		cr.BackoffUntil = time.Now().Add(min(delay, backoffMax))
		if pr, ok := k.state[uid]; ok {
			_ = k.save(pr)
		}
	}
	k.mu.Unlock()
	k.queue.Add(uid)
}

// containerEnv is the container's environment: its own variables, the
// kubernetes service variables, and a PATH.
func (k *Kubelet) containerEnv(pod *corev1.Pod, pr *podRuntime, c *corev1.Container) []string {
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME=" + pod.Name,
		"HOME=/root",
		"KUBERNETES_SERVICE_HOST=" + k.cfg.KubernetesService.String(),
		"KUBERNETES_SERVICE_PORT=443",
		"KUBERNETES_SERVICE_PORT_HTTPS=443",
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
			continue
		}
		if f := e.ValueFrom.FieldRef; f != nil {
			if v, ok := fieldValue(pod, pr, f.FieldPath); ok {
				env = append(env, e.Name+"="+v)
			}
		}
	}
	return env
}

// fieldValue resolves the downward-API fields a lab pod may ask for.
func fieldValue(pod *corev1.Pod, pr *podRuntime, path string) (string, bool) {
	switch path {
	case "metadata.name":
		return pod.Name, true
	case "metadata.namespace":
		return pod.Namespace, true
	case "metadata.uid":
		return string(pod.UID), true
	case "spec.nodeName":
		return pod.Spec.NodeName, true
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, true
	case "status.podIP":
		return pr.PodIP.String(), true
	}
	return "", false
}

// stopContainer stops a container's process group: SIGTERM, then SIGKILL
// after grace.
func stopContainer(cr *containerRuntime, grace time.Duration) {
	if cr.Pid <= 0 {
		return
	}
	_ = syscall.Kill(-cr.Pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && proc.Alive(cr.Pid) {
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-cr.Pid, syscall.SIGKILL)
}
