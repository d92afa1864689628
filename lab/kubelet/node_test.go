package kubelet

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// registerNode outlasts a busy API server and a status write that lost the
// race against the controller-manager, instead of ending the node runtime.
func TestRegisterNodeRetries(t *testing.T) {
	client := fake.NewClientset()
	failures := map[string]error{
		"create":        apierrors.NewServerTimeout(schema.GroupResource{Resource: "nodes"}, "create", 1),
		"update/status": apierrors.NewConflict(schema.GroupResource{Resource: "nodes"}, "k8s-w1", nil),
	}
	for verb, err := range failures {
		action, sub, _ := strings.Cut(verb, "/")
		client.PrependReactor(action, "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetSubresource() != sub || failures[verb] == nil {
				return false, nil, nil
			}
			failures[verb] = nil // fail once
			return true, nil, err
		})
	}
	k := &Kubelet{cfg: Config{NodeName: "k8s-w1", NodeIP: netip.MustParseAddr("192.168.10.101")}, client: client}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.registerNode(ctx); err != nil {
		t.Fatalf("registerNode: %v", err)
	}
	for verb, err := range failures {
		if err != nil {
			t.Errorf("the %s failure was never met", verb)
		}
	}
	node, err := client.CoreV1().Nodes().Get(ctx, "k8s-w1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range node.Status.Conditions {
		ready = ready || c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
	}
	if !ready {
		t.Errorf("node status %+v, want Ready", node.Status.Conditions)
	}
}
