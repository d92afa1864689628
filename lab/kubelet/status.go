package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// reportSandboxError writes a pod status saying why its sandbox could not be
// made, as a kubelet reports FailedCreatePodSandBox.
func (k *Kubelet) reportSandboxError(ctx context.Context, pod *corev1.Pod, cause error) error {
	st := pod.Status.DeepCopy()
	st.Phase = corev1.PodPending
	st.HostIP = k.cfg.NodeIP.String()
	st.HostIPs = []corev1.HostIP{{IP: k.cfg.NodeIP.String()}}
	setCondition(st, corev1.PodReadyToStartContainers, false, "FailedCreatePodSandBox", cause.Error())
	return k.writeStatus(ctx, pod, st)
}

// updateStatus computes the pod's status from its sandbox and containers and
// writes it when it changed.
func (k *Kubelet) updateStatus(ctx context.Context, pod *corev1.Pod, pr *podRuntime) error {
	k.probeReadiness(pod, pr)
	k.mu.Lock()
	st := k.podStatus(pod, pr)
	k.mu.Unlock()
	return k.writeStatus(ctx, pod, st)
}

func (k *Kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, st *corev1.PodStatus) error {
	if equality.Semantic.DeepEqual(&pod.Status, st) {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Status = *st
	if _, err := k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	return nil
}

// podStatus is the status a kubelet would report. The caller holds k.mu.
func (k *Kubelet) podStatus(pod *corev1.Pod, pr *podRuntime) *corev1.PodStatus {
	st := pod.Status.DeepCopy()
	st.HostIP = k.cfg.NodeIP.String()
	st.HostIPs = []corev1.HostIP{{IP: k.cfg.NodeIP.String()}}
	if st.StartTime == nil {
		t := metav1.NewTime(pr.Created)
		st.StartTime = &t
	}
	if pr.PodIP.IsValid() {
		st.PodIP = pr.PodIP.String()
		st.PodIPs = []corev1.PodIP{{IP: pr.PodIP.String()}}
	}
	var statuses []corev1.ContainerStatus
	running, ready, succeeded, failed := 0, 0, 0, 0
	for _, c := range pod.Spec.Containers {
		cr := pr.Containers[c.Name]
		cs := containerStatus(&c, cr)
		statuses = append(statuses, cs)
		switch {
		case cr != nil && cr.Running:
			running++
			if cr.Ready {
				ready++
			}
		case cr != nil && cr.LastExit != nil && !shouldRun(pod.Spec.RestartPolicy, cr):
			if cr.LastExit.ExitCode == 0 {
				succeeded++
			} else {
				failed++
			}
		}
	}
	st.ContainerStatuses = statuses
	n := len(pod.Spec.Containers)
	switch {
	case succeeded+failed == n && failed > 0:
		st.Phase = corev1.PodFailed
	case succeeded == n:
		st.Phase = corev1.PodSucceeded
	case running > 0 || succeeded+failed > 0 || anyStarted(pr):
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	allReady := ready == n
	setCondition(st, corev1.PodScheduled, true, "", "")
	setCondition(st, corev1.PodReadyToStartContainers, pr.NetworkReady, "", "")
	setCondition(st, corev1.PodInitialized, true, "", "")
	reason := ""
	if !allReady {
		reason = "ContainersNotReady"
	}
	setCondition(st, corev1.ContainersReady, allReady, reason, "")
	setCondition(st, corev1.PodReady, allReady, reason, "")
	return st
}

// anyStarted reports whether a container of the pod ever ran: a pod whose
// container exited and will be restarted is Running, as a kubelet says.
func anyStarted(pr *podRuntime) bool {
	for _, cr := range pr.Containers {
		if cr.Running || cr.LastExit != nil {
			return true
		}
	}
	return false
}

// containerStatus reports one container. A container with no record yet is
// waiting in ContainerCreating.
func containerStatus(c *corev1.Container, cr *containerRuntime) corev1.ContainerStatus {
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "nettrace-lab://" + imageName(c.Image)}
	if cr == nil {
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		return cs
	}
	cs.RestartCount = cr.RestartCount
	if cr.ID != "" {
		cs.ContainerID = "nettrace://" + cr.ID
	}
	if cr.LastExit != nil {
		term := &corev1.ContainerStateTerminated{
			ExitCode:   cr.LastExit.ExitCode,
			Reason:     exitReason(cr.LastExit),
			StartedAt:  metav1.NewTime(cr.LastExit.StartedAt),
			FinishedAt: metav1.NewTime(cr.LastExit.FinishedAt),
		}
		if cr.Running {
			cs.LastTerminationState.Terminated = term
		} else {
			cs.State.Terminated = term
		}
	}
	switch {
	case cr.Running:
		cs.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(cr.StartedAt)}}
		started := true
		cs.Started = &started
		cs.Ready = cr.Ready
	case cr.Waiting != "":
		if cs.State.Terminated != nil {
			cs.LastTerminationState.Terminated = cs.State.Terminated
		}
		cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: cr.Waiting, Message: cr.WaitingMessage}}
	case cr.LastExit == nil:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	return cs
}

func exitReason(e *exitRecord) string {
	switch {
	case e.ExitCode == 0:
		return "Completed"
	case e.Signal != "":
		return "Error"
	}
	return "Error"
}

func setCondition(st *corev1.PodStatus, t corev1.PodConditionType, ok bool, reason, message string) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type == t {
			if c.Status != status {
				c.Status = status
				c.LastTransitionTime = metav1.Now()
			}
			c.Reason, c.Message = reason, message
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, Reason: reason, Message: message, LastTransitionTime: metav1.Now()})
}

// probeReadiness runs each running container's readiness probe, inside the
// pod's netns for TCP and HTTP probes. A container without one is ready
// while it runs.
func (k *Kubelet) probeReadiness(pod *corev1.Pod, pr *podRuntime) {
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		k.mu.Lock()
		cr := pr.Containers[c.Name]
		running := cr != nil && cr.Running
		pid := 0
		if running {
			pid = cr.Pid
		}
		k.mu.Unlock()
		if !running {
			continue
		}
		ok := c.ReadinessProbe == nil || probe(c.ReadinessProbe, pr, pid)
		k.mu.Lock()
		cr.Ready = ok
		k.mu.Unlock()
	}
}

// probe runs one probe once.
func probe(p *corev1.Probe, pr *podRuntime, pid int) bool {
	timeout := time.Second
	if p.TimeoutSeconds > 0 {
		timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	port := func(v intstr.IntOrString) string {
		if v.Type == intstr.Int {
			return strconv.Itoa(v.IntValue())
		}
		return v.StrVal
	}
	switch {
	case p.TCPSocket != nil:
		return inPodNetns(pr, func() bool {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(pr.PodIP.String(), port(p.TCPSocket.Port)), timeout)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	case p.HTTPGet != nil:
		return inPodNetns(pr, func() bool {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(pr.PodIP.String(), port(p.HTTPGet.Port)), timeout)
			if err != nil {
				return false
			}
			client := &http.Client{Timeout: timeout, Transport: &http.Transport{
				DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
			}}
			resp, err := client.Get("http://" + net.JoinHostPort(pr.PodIP.String(), port(p.HTTPGet.Port)) + p.HTTPGet.Path)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode >= 200 && resp.StatusCode < 400
		})
	case p.Exec != nil:
		args := append([]string{"--target", strconv.Itoa(pid), "--net", "--uts", "--mount", "--"}, p.Exec.Command...)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return exec.CommandContext(ctx, "nsenter", args...).Run() == nil
	}
	return true
}

func inPodNetns(pr *podRuntime, fn func() bool) bool {
	ok := false
	err := ns.WithNetNSPath("/run/netns/"+pr.Netns, func(ns.NetNS) error {
		ok = fn()
		return nil
	})
	return err == nil && ok
}
