package loadbalancer

import (
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

func memberLease(node string, renewed time.Time) *coordinationv1.Lease {
	at := metav1.NewMicroTime(renewed)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: memberLeaseName(node), Labels: map[string]string{MemberLabel: node}},
		Spec:       coordinationv1.LeaseSpec{RenewTime: &at},
	}
}

// A speaker is alive while its Lease's renewTime changed within the
// duration, by the observer's clock: a Lease seen again unchanged does not
// keep it alive, whatever time it names.
func TestMembersAlive(t *testing.T) {
	const duration = 100 * time.Millisecond
	m := newMembers(duration)
	nodes := []*v1.Node{node("k8s-w1", true), node("k8s-w2", true), node("k8s-w3", true)}
	names := func() []string {
		var out []string
		for _, n := range m.alive(nodes) {
			out = append(out, n.Name)
		}
		return out
	}
	first := time.Now().Add(time.Hour) // a clock far ahead counts for nothing
	m.observe(memberLease("k8s-w1", first))
	m.observe(memberLease("k8s-w2", first))
	unlabelled := memberLease("k8s-w3", first)
	unlabelled.Labels = nil
	m.observe(unlabelled)
	if got := names(); !slices.Equal(got, []string{"k8s-w1", "k8s-w2"}) {
		t.Fatalf("alive %v, want k8s-w1 and k8s-w2", got)
	}

	time.Sleep(duration + 20*time.Millisecond)
	m.observe(memberLease("k8s-w1", first))                  // seen again, not renewed
	m.observe(memberLease("k8s-w2", first.Add(time.Second))) // renewed
	if got := names(); !slices.Equal(got, []string{"k8s-w2"}) {
		t.Fatalf("after the duration, alive %v, want only the renewed k8s-w2", got)
	}

	m.forget(cache.DeletedFinalStateUnknown{Key: "kube-system/x", Obj: memberLease("k8s-w2", first)})
	if got := names(); len(got) != 0 {
		t.Errorf("after k8s-w2's Lease was deleted, alive %v, want none", got)
	}
}
