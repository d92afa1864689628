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
	"k8s.io/apimachinery/pkg/util/wait"
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
	return l.poll(ctx, 60*time.Second, "the service account default/default", func(ctx context.Context) (bool, string) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})
}

// poll calls check every 200 ms until it is done or timeout passes; the
// error then says what was waited for, what check last said, and which lab
// processes have stopped.
func (c *Config) poll(ctx context.Context, timeout time.Duration, what string, check func(context.Context) (done bool, last string)) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var done bool
		done, last = check(ctx)
		return done, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w (last: %s)%s", what, err, last, c.Stopped())
	}
	return nil
}

// WaitPodsRunning waits until every pod in the cluster is Running and Ready
// (or has Succeeded), and the deployments have all their replicas.
func (c *Config) WaitPodsRunning(ctx context.Context, timeout time.Duration) error {
	cs, _, err := clients(c.Kubeconfig())
	if err != nil {
		return err
	}
	return c.poll(ctx, timeout, "every pod Running", func(ctx context.Context) (bool, string) {
		pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var pending []string
		for _, p := range pods.Items {
			if !podReady(&p) {
				pending = append(pending, fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, podState(&p)))
			}
		}
		for _, d := range deps.Items {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			if d.Status.ReadyReplicas != want || d.Status.UpdatedReplicas != want || d.Status.Replicas != want {
				pending = append(pending, fmt.Sprintf("deployment %s/%s (%d/%d ready)", d.Namespace, d.Name, d.Status.ReadyReplicas, want))
			}
		}
		sort.Strings(pending)
		return len(pending) == 0 && len(pods.Items) > 0, "not running: " + strings.Join(pending, ", ")
	})
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
