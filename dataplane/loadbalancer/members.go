package loadbalancer

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// Speakers find out which of them are alive through Leases, one per
// speaker, which it renews while it runs: a node whose speaker died while
// the node stays Ready (the node daemon crashed or was killed) must not keep
// its addresses, since nobody would answer ARP for them. (MetalLB's
// speakers use memberlist for the same.) A speaker counts as alive while
// this speaker has seen its Lease renewed within the Lease's duration, by
// this speaker's own clock, so that the nodes' clocks need not agree.

// MemberLabel marks the speakers' Leases; its value is the node's name.
const MemberLabel = "nettrace.dev/lb-speaker"

// Defaults of the speakers' Leases.
const (
	DefaultMemberNamespace     = metav1.NamespaceSystem
	DefaultMemberLeaseDuration = 10 * time.Second
)

// memberLeaseName is the name of the Lease of node's speaker.
func memberLeaseName(node string) string { return "nettrace-lb-speaker-" + node }

// members tracks which nodes have a live speaker, from the Leases the
// informer delivers.
type members struct {
	duration time.Duration

	mu      sync.Mutex
	renewal map[string]metav1.MicroTime // node → the renewTime of its Lease last seen
	seen    map[string]time.Time        // node → when that renewTime was first seen here
}

func newMembers(duration time.Duration) *members {
	return &members{duration: duration,
		renewal: make(map[string]metav1.MicroTime), seen: make(map[string]time.Time)}
}

// observe records a speaker's Lease, as added or updated.
func (m *members) observe(obj any) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok || l.Labels[MemberLabel] == "" || l.Spec.RenewTime == nil {
		return
	}
	node := l.Labels[MemberLabel]
	m.mu.Lock()
	defer m.mu.Unlock()
	if prev, ok := m.renewal[node]; !ok || !prev.Equal(l.Spec.RenewTime) {
		m.renewal[node], m.seen[node] = *l.Spec.RenewTime, time.Now()
	}
}

// forget drops the speaker of a deleted Lease: it stopped, and gave its
// addresses up.
func (m *members) forget(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	l, ok := obj.(*coordinationv1.Lease)
	if !ok || l.Labels[MemberLabel] == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.renewal, l.Labels[MemberLabel])
	delete(m.seen, l.Labels[MemberLabel])
}

// alive returns the nodes whose speaker is alive.
func (m *members) alive(nodes []*v1.Node) []*v1.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	var live []*v1.Node
	for _, n := range nodes {
		if seen, ok := m.seen[n.Name]; ok && now.Sub(seen) < m.duration {
			live = append(live, n)
		}
	}
	return live
}

// renewMember creates or renews the Lease of node's speaker.
func renewMember(ctx context.Context, client kubernetes.Interface, namespace, node string, duration time.Duration) error {
	leases := client.CoordinationV1().Leases(namespace)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, memberLeaseName(node), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: memberLeaseName(node), Namespace: namespace,
				Labels: map[string]string{MemberLabel: node}},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(node),
				LeaseDurationSeconds: ptr.To(int32(duration.Round(time.Second) / time.Second)),
				AcquireTime:          &now,
				RenewTime:            &now,
			},
		}
		if _, err := leases.Create(ctx, lease, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating the speaker's Lease %s/%s: %w", namespace, lease.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the speaker's Lease %s/%s: %w", namespace, memberLeaseName(node), err)
	}
	lease.Spec.RenewTime = &now
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renewing the speaker's Lease %s/%s: %w", namespace, lease.Name, err)
	}
	return nil
}

// removeMember deletes the Lease of node's speaker, so that the others
// take its addresses over at once.
func removeMember(ctx context.Context, client kubernetes.Interface, namespace, node string) error {
	err := client.CoordinationV1().Leases(namespace).Delete(ctx, memberLeaseName(node), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the speaker's Lease %s/%s: %w", namespace, memberLeaseName(node), err)
	}
	return nil
}
