package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-nettrace/nettrace/lab/kubelet"
)

// ExecCommand builds the command that runs argv inside target:
//   - "node/NAME": in the node's netns, as root on that node;
//   - "external": in the outside world's netns;
//   - "POD" or "pod/POD": in a container of the pod (the first one unless
//     container is set), sharing its netns, hostname and mounts.
func (c *Config) ExecCommand(ctx context.Context, target, namespace, container string, argv []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command given: put it after --")
	}
	topo, err := c.Topology()
	if err != nil {
		return nil, err
	}
	switch {
	case target == "external":
		return nsenterNet(ExternalNetns, argv), nil
	case strings.HasPrefix(target, "node/"):
		name := strings.TrimPrefix(target, "node/")
		n, ok := topo.Node(name)
		if !ok {
			var names []string
			for _, n := range topo.Nodes {
				names = append(names, n.Name)
			}
			return nil, fmt.Errorf("no node %q in the lab (nodes: %s)", name, strings.Join(names, ", "))
		}
		return nsenterNet(n.Netns(), argv), nil
	}
	return c.execInPod(ctx, strings.TrimPrefix(target, "pod/"), namespace, container, argv)
}

func nsenterNet(netnsName string, argv []string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + NetnsPath(netnsName), "--"}, argv...)...)
}

func (c *Config) execInPod(ctx context.Context, name, namespace, container string, argv []string) (*exec.Cmd, error) {
	cs, _, err := clients(c.Kubeconfig())
	if err != nil {
		return nil, err
	}
	pod, err := cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("pod %q not found in namespace %q", name, namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)
	}
	if container == "" {
		container = pod.Spec.Containers[0].Name
	} else if !hasContainer(pod, container) {
		return nil, fmt.Errorf("container %q not found in pod %s/%s", container, namespace, name)
	}
	if pod.Spec.NodeName == "" || pod.Status.Phase != corev1.PodRunning {
		return nil, fmt.Errorf("pod %s/%s is not running (phase %s)", namespace, name, pod.Status.Phase)
	}
	sb, err := kubelet.LoadSandbox(c.NodeDir(pod.Spec.NodeName), pod.UID)
	if err != nil {
		return nil, fmt.Errorf("finding the sandbox of pod %s/%s on %s: %w", namespace, name, pod.Spec.NodeName, err)
	}
	pid, ok := sb.Containers[container]
	if !ok {
		return nil, fmt.Errorf("container %q of pod %s/%s is not running", container, namespace, name)
	}
	args := append([]string{"--target", strconv.Itoa(pid), "--net", "--uts", "--mount", "--"}, argv...)
	return exec.Command("nsenter", args...), nil
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	return false
}
