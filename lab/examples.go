package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ApplyExamples applies the seed's manifests in dir (docs/examples), once
// the default namespace's service account exists: a pod cannot be created
// before the controller manager has made it.
func (l *Lab) ApplyExamples(ctx context.Context, dir string) error {
	if err := l.waitDefaultServiceAccount(ctx); err != nil {
		return err
	}
	var stderr bytes.Buffer
	if err := l.Kubectl(ctx, nil, io.Discard, &stderr, "apply", "-f", dir); err != nil {
		return fmt.Errorf("applying %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (l *Lab) waitDefaultServiceAccount(ctx context.Context) error {
	cs, _, err := l.Clients()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the service account default/default: %w (last: %v)%s", ctx.Err(), err, l.Stopped())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// WaitPodsRunning waits until every pod in the cluster is Running and Ready
// (or has Succeeded), and the deployments have all their replicas.
func (c *Config) WaitPodsRunning(ctx context.Context, timeout time.Duration) error {
	cs, _, err := clients(c.Kubeconfig())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var pending []string
	for {
		pending = pending[:0]
		pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, p := range pods.Items {
				if !podReady(&p) {
					pending = append(pending, fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, podState(&p)))
				}
			}
			deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
			if err == nil {
				for _, d := range deps.Items {
					want := int32(1)
					if d.Spec.Replicas != nil {
						want = *d.Spec.Replicas
					}
					if d.Status.ReadyReplicas != want || d.Status.UpdatedReplicas != want || d.Status.Replicas != want {
						pending = append(pending, fmt.Sprintf("deployment %s/%s (%d/%d ready)", d.Namespace, d.Name, d.Status.ReadyReplicas, want))
					}
				}
			}
			if len(pending) == 0 && len(pods.Items) > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			sort.Strings(pending)
			return fmt.Errorf("pods not running after %s: %s%s", timeout, strings.Join(pending, ", "), c.Stopped())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase == corev1.PodSucceeded {
		return true
	}
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podState is a short reason a pod is not ready, like kubectl's STATUS column.
func podState(p *corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return "Terminating"
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return w.Reason
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status == corev1.ConditionFalse && c.Reason != "" && c.Reason != "ContainersNotReady" {
			return c.Reason
		}
	}
	return string(p.Status.Phase)
}
