package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// syncPod makes the node match one pod: it creates the sandbox and starts
// the containers of a live pod, restarts crashed ones, stops and removes a
// deleted one, and writes the pod's status.
func (k *Kubelet) syncPod(ctx context.Context, uid types.UID) error {
	pod := k.podByUID(uid)
	k.mu.Lock()
	pr := k.state[uid]
	k.mu.Unlock()

	switch {
	case pod == nil:
		// Gone from the API (force-deleted, or deleted while we were down).
		if pr != nil {
			return k.removePod(ctx, pr, 0)
		}
		return nil
	case pod.DeletionTimestamp != nil:
		grace := 30 * time.Second
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		if pr != nil {
			if err := k.removePod(ctx, pr, grace); err != nil {
				return err
			}
		}
		// Containers are stopped: finish the deletion, as a kubelet does.
		err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64),
			Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("finishing deletion: %w", err)
		}
		return nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		if pr != nil && !pr.HostNetwork && pr.NetworkReady {
			// A finished pod keeps its record but gives its address back.
			if err := k.teardownSandbox(ctx, pr); err != nil {
				return err
			}
			k.mu.Lock()
			pr.NetworkReady = false
			err := k.save(pr)
			k.mu.Unlock()
			return err
		}
		return nil
	}

	if pr == nil {
		created, err := k.newSandbox(ctx, pod)
		if err != nil {
			_ = k.reportSandboxError(ctx, pod, err)
			return err
		}
		k.mu.Lock()
		k.state[uid] = created
		err = k.save(created)
		k.mu.Unlock()
		if err != nil {
			return err
		}
		pr = created
	}
	wait := k.runContainers(pod, pr)
	if err := k.updateStatus(ctx, pod, pr); err != nil {
		return err
	}
	if wait > 0 {
		k.queue.AddAfter(uid, wait)
	}
	return nil
}

// runContainers starts every container that should run and is not running.
// It returns how long until a container in backoff may start, or 0.
func (k *Kubelet) runContainers(pod *corev1.Pod, pr *podRuntime) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	var wait time.Duration
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		cr, ok := pr.Containers[c.Name]
		if !ok {
			cr = &containerRuntime{Name: c.Name, Image: c.Image}
			pr.Containers[c.Name] = cr
		}
		if cr.Running || !shouldRun(pod.Spec.RestartPolicy, cr) {
			continue
		}
		if left := time.Until(cr.BackoffUntil); left > 0 {
			cr.Waiting = "CrashLoopBackOff"
			cr.WaitingMessage = fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", left.Round(time.Second), c.Name, pod.Name)
			if wait == 0 || left < wait {
				wait = left
			}
			continue
		}
		if cr.LastExit != nil {
			cr.RestartCount++
		}
		if err := k.startContainer(pod, pr, c, cr); err != nil {
			var unknown ErrImageUnknown
			if errors.As(err, &unknown) {
				cr.Waiting, cr.WaitingMessage = "ErrImagePull", err.Error()
			} else {
				cr.Waiting, cr.WaitingMessage = "CreateContainerError", err.Error()
				cr.BackoffUntil = time.Now().Add(backoffInitial)
				wait = backoffInitial
			}
			log.Printf("pod %s/%s container %s: %v", pod.Namespace, pod.Name, c.Name, err)
		}
	}
	_ = k.save(pr)
	return wait
}

// shouldRun applies the restart policy to a container that is not running.
func shouldRun(policy corev1.RestartPolicy, cr *containerRuntime) bool {
	if cr.Waiting == "ErrImagePull" {
		return false
	}
	if cr.LastExit == nil {
		return true
	}
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return cr.LastExit.ExitCode != 0
	}
	return true
}

// removePod stops the pod's containers, then tears down its sandbox and
// forgets it.
func (k *Kubelet) removePod(ctx context.Context, pr *podRuntime, grace time.Duration) error {
	k.mu.Lock()
	var running []*containerRuntime
	for _, cr := range pr.Containers {
		running = append(running, cr)
	}
	k.mu.Unlock()
	for _, cr := range running {
		stopContainer(cr, grace)
	}
	if err := k.teardownSandbox(ctx, pr); err != nil {
		return err
	}
	k.mu.Lock()
	delete(k.state, pr.UID)
	k.mu.Unlock()
	return os.RemoveAll(k.podDir(pr.UID))
}

// recover takes over the sandboxes of a previous run. Their netns and
// addresses are kept; their processes are stopped and started again, which
// counts as a restart. Sandboxes of pods that are gone are removed.
func (k *Kubelet) recover(ctx context.Context) error {
	saved, err := k.loadAll()
	if err != nil {
		return err
	}
	for _, pr := range saved {
		for _, cr := range pr.Containers {
			if cr.Running {
				stopContainer(cr, 2*time.Second)
				cr.Running = false
				cr.LastExit = &exitRecord{ExitCode: 137, Signal: "killed", StartedAt: cr.StartedAt, FinishedAt: time.Now()}
			}
		}
		k.mu.Lock()
		k.state[pr.UID] = pr
		k.mu.Unlock()
		k.queue.Add(pr.UID)
	}
	return nil
}

// probeLoop looks at every pod of the node each second, so that readiness
// follows the containers' probes.
func (k *Kubelet) probeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			k.mu.Lock()
			for uid := range k.state {
				k.queue.Add(uid)
			}
			k.mu.Unlock()
		}
	}
}
