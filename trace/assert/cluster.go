package assert

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// Cluster looks up the pods and nodes that expectations name.
type Cluster interface {
	// Pods returns the pods of namespace that the label selector selects.
	Pods(ctx context.Context, namespace, selector string) ([]Pod, error)
	// Pod returns one pod.
	Pod(ctx context.Context, namespace, name string) (Pod, error)
	// NodeAddresses returns the addresses a node may rewrite a packet's
	// source to: its own and its tunnel's.
	NodeAddresses(ctx context.Context, node string) ([]netip.Addr, error)
}

// Pod is a pod as expectations see it.
type Pod struct {
	// Name is "namespace/name".
	Name string
	IP   netip.Addr
}

// tunnelAnnotations hold a node's tunnel addresses: the reference
// dataplane's, and Calico's for IPIP, VXLAN and WireGuard.
var tunnelAnnotations = []string{
	"nettrace.dev/ipv4-tunnel-address",
	"projectcalico.org/IPv4IPIPTunnelAddr",
	"projectcalico.org/IPv4VXLANTunnelAddr",
	"projectcalico.org/IPv4WireguardInterfaceAddr",
}

// kubeCluster looks things up through the API server.
type kubeCluster struct{ kube kubernetes.Interface }

// NewCluster returns the Cluster that kube reaches.
func NewCluster(kube kubernetes.Interface) Cluster { return kubeCluster{kube} }

func (c kubeCluster) Pods(ctx context.Context, namespace, selector string) ([]Pod, error) {
	list, err := c.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, lookupError(fmt.Errorf("listing the pods %s in namespace %q: %w", selector, namespace, err))
	}
	var pods []Pod
	for i := range list.Items {
		if p, ok := podOf(&list.Items[i]); ok {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

func (c kubeCluster) Pod(ctx context.Context, namespace, name string) (Pod, error) {
	pod, err := c.kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Pod{}, lookupError(fmt.Errorf("getting pod %s/%s: %w", namespace, name, err))
	}
	p, ok := podOf(pod)
	if !ok {
		return Pod{}, kindError{cluster.ErrInvalid, fmt.Errorf("pod %s/%s has no IPv4 address", namespace, name)}
	}
	return p, nil
}

// podOf is a pod with an IPv4 address of its own.
func podOf(pod *corev1.Pod) (Pod, bool) {
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || !ip.Is4() || pod.Spec.HostNetwork {
		return Pod{}, false
	}
	return Pod{Name: pod.Namespace + "/" + pod.Name, IP: ip}, true
}

func (c kubeCluster) NodeAddresses(ctx context.Context, name string) ([]netip.Addr, error) {
	node, err := c.kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, lookupError(fmt.Errorf("getting node %s: %w", name, err))
	}
	var addrs []netip.Addr
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			addrs = append(addrs, ip)
		}
	}
	for _, key := range tunnelAnnotations {
		// Calico writes some of them with their prefix length.
		value, _, _ := strings.Cut(node.Annotations[key], "/")
		if ip, err := netip.ParseAddr(value); err == nil {
			addrs = append(addrs, ip)
		}
	}
	return addrs, nil
}

// lookupError marks a failed lookup with the kind of trace/cluster's
// errors: a pod or node that does not exist is bad input, a refusal is
// forbidden, anything else means the check could not run.
func lookupError(err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return kindError{cluster.ErrInvalid, err}
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return kindError{cluster.ErrForbidden, err}
	}
	return kindError{cluster.ErrCannotRun, err}
}

// kindError is err, matched by errors.Is as kind too.
type kindError struct{ kind, err error }

func (e kindError) Error() string        { return e.err.Error() }
func (e kindError) Unwrap() error        { return e.err }
func (e kindError) Is(target error) bool { return target == e.kind }
