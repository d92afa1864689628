package loadbalancer

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

func TestMain(m *testing.M) { os.Exit(apitest.Run(m)) }

// TestControllerWithAPIServer runs the controller against a real API server,
// whose status subresource, validation and Lease handling the fake
// clientset only imitates.
func TestControllerWithAPIServer(t *testing.T) {
	client, err := kubernetes.NewForConfig(apitest.Get(t).Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The shared server outlives the test: a namespace and a Lease of its own.
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "lb-test-"}}
	if ns, err = client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The test server runs no namespace controller: delete the services
	// themselves, or the next test's controller would find their addresses.
	t.Cleanup(func() {
		for _, name := range []string{"web", "other"} {
			client.CoreV1().Services(ns.Name).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
		client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	lease := ns.Name + "-lb"
	t.Cleanup(func() {
		client.CoordinationV1().Leases(metav1.NamespaceSystem).Delete(context.Background(), lease, metav1.DeleteOptions{})
	})
	startController(t, client, "192.168.10.200/29", ControllerOptions{Identity: "k8s-w1", LeaseName: lease})

	svc := lbService("web", func(s *v1.Service) { s.Namespace = ns.Name })
	if svc, err = client.CoreV1().Services(ns.Name).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	get := func() *v1.Service {
		got, err := client.CoreV1().Services(ns.Name).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	waitFor(t, 10*time.Second, "web to get 192.168.10.200", func() (bool, string) {
		ing := get().Status.LoadBalancer.Ingress
		ok := len(ing) == 1 && ing[0].IP == "192.168.10.200" && ing[0].IPMode != nil && *ing[0].IPMode == v1.LoadBalancerIPModeVIP
		return ok, "ingress is " + strings.TrimSpace(strings.ReplaceAll(get().Status.LoadBalancer.String(), "\n", " "))
	})
	if holder := func() string {
		l, err := client.CoordinationV1().Leases(metav1.NamespaceSystem).Get(ctx, lease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}(); holder != "k8s-w1" {
		t.Errorf("Lease %s holder = %q, want k8s-w1", lease, holder)
	}

	// No longer a LoadBalancer: the status goes, and the address with it.
	current := get()
	current.Spec.Type = v1.ServiceTypeClusterIP
	current.Spec.AllocateLoadBalancerNodePorts = nil
	for i := range current.Spec.Ports {
		current.Spec.Ports[i].NodePort = 0
	}
	if _, err := client.CoreV1().Services(ns.Name).Update(ctx, current, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("turning web into a ClusterIP service: %v", err)
	}
	waitFor(t, 10*time.Second, "web's status to be cleared", func() (bool, string) {
		ing := get().Status.LoadBalancer.Ingress
		return len(ing) == 0, "ingress is " + get().Status.LoadBalancer.String()
	})
	other := lbService("other", func(s *v1.Service) { s.Namespace = ns.Name })
	if _, err := client.CoreV1().Services(ns.Name).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "other to get the released 192.168.10.200", func() (bool, string) {
		got, err := client.CoreV1().Services(ns.Name).Get(ctx, "other", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		ing := got.Status.LoadBalancer.Ingress
		return len(ing) == 1 && ing[0].IP == "192.168.10.200", "ingress is " + got.Status.LoadBalancer.String()
	})
}
