package kubelet

import (
	"context"
	"fmt"
	"log"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kubectl-nettrace/nettrace/lab/controlplane"
)

// How often the node's lease and status are renewed, as a kubelet does.
const (
	leaseDuration  = 40 * time.Second
	leaseRenew     = 10 * time.Second
	statusInterval = 30 * time.Second
)

// registerNode creates the Node object, or takes over the one a previous run
// left, and marks it Ready.
func (k *Kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.cfg.NodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": k.cfg.NodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
			},
		},
	}
	if k.cfg.Master {
		// The role label is the admin's to set (NodeRestriction forbids it
		// to nodes); the lab sets it, as kubeadm's mark-control-plane does.
		node.Spec.Taints = []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}
	}
	// Like the kubelet, it keeps trying until it succeeds or ctx ends: the
	// API server may be busy, and the controller-manager changes a new Node
	// (its taints) while the first status is written.
	wait := 200 * time.Millisecond
	for {
		_, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			err = k.updateNodeStatus(ctx)
		}
		if err == nil {
			return nil
		}
		log.Printf("registering node %s: %v; retrying in %s", k.cfg.NodeName, err, wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("registering node %s: %w", k.cfg.NodeName, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// heartbeat renews the node's lease and status until ctx ends.
func (k *Kubelet) heartbeat(ctx context.Context) {
	lease := time.NewTicker(leaseRenew)
	status := time.NewTicker(statusInterval)
	defer lease.Stop()
	defer status.Stop()
	k.renewLease(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-lease.C:
			k.renewLease(ctx)
		case <-status.C:
			if err := k.updateNodeStatus(ctx); err != nil {
				log.Printf("node status: %v", err)
			}
		}
	}
}

func (k *Kubelet) renewLease(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	holder := k.cfg.NodeName
	duration := int32(leaseDuration.Seconds())
	lease, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec:       coordv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &duration, RenewTime: &now},
		}
		if node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{}); err == nil {
			lease.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
	} else if err == nil {
		lease.Spec.RenewTime = &now
		lease.Spec.HolderIdentity = &holder
		lease.Spec.LeaseDurationSeconds = &duration
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil && ctx.Err() == nil {
		log.Printf("renewing node lease: %v", err)
	}
}

// updateNodeStatus reports the node Ready with its addresses and capacity.
func (k *Kubelet) updateNodeStatus(ctx context.Context) error {
	// The Node changes under the kubelet (the controller-manager taints and
	// annotates it): a write that lost the race is made again on a fresh read.
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return k.writeNodeStatus(ctx) })
}

// writeNodeStatus reads the Node and writes its status once.
func (k *Kubelet) writeNodeStatus(ctx context.Context) error {
	node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", k.cfg.NodeName, err)
	}
	now := metav1.Now()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory: resource.MustParse("4Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	ready := corev1.NodeCondition{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "nettrace-lab node runtime is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			ready.LastTransitionTime = c.LastTransitionTime
		}
	}
	node.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			ready,
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: k.cfg.NodeIP.String()},
			{Type: corev1.NodeHostName, Address: k.cfg.NodeName},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KernelVersion:           unix.ByteSliceToString(uts.Release[:]),
			OSImage:                 "nettrace-lab node (network namespace)",
			OperatingSystem:         "linux",
			Architecture:            runtime.GOARCH,
			ContainerRuntimeVersion: "nettrace-lab://" + controlplane.Version,
			KubeletVersion:          controlplane.Version,
			KubeProxyVersion:        controlplane.Version,
		},
	}
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating node status: %w", err)
	}
	return nil
}
