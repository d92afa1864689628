package loadbalancer

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

// Short leader election timings, so that a test sees a failover in a second.
var fastLease = ControllerOptions{
	LeaseDuration: time.Second,
	RenewDeadline: 500 * time.Millisecond,
	RetryPeriod:   100 * time.Millisecond,
}

// startController runs a controller for pool until the returned stop is
// called or the test ends; stop waits for Run to return.
func startController(t *testing.T, client kubernetes.Interface, pool string, opts ControllerOptions) (stop func()) {
	t.Helper()
	if opts.Identity == "" {
		opts.Identity = "test-controller"
	}
	if opts.LeaseDuration == 0 {
		opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod = fastLease.LeaseDuration, fastLease.RenewDeadline, fastLease.RetryPeriod
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	c, err := NewController(client, netip.MustParsePrefix(pool), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("controller %s: Run: %v", opts.Identity, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("controller %s did not stop", opts.Identity)
		}
	}
	t.Cleanup(stop)
	return stop
}

// create creates services, failing the test on error.
func create(t *testing.T, client kubernetes.Interface, services ...*v1.Service) {
	t.Helper()
	for _, svc := range services {
		if _, err := client.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating service %s: %v", svc.Name, err)
		}
	}
}

// deleteService deletes a service, failing the test on error.
func deleteService(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	if err := client.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting service %s: %v", name, err)
	}
}

func TestControllerAllocatesLowestFreeAddress(t *testing.T) {
	client := fake.NewClientset()
	startController(t, client, "192.168.10.200/29", ControllerOptions{Identity: "k8s-w1"})

	create(t, client, lbService("first"))
	waitForIngress(t, client, "first", "192.168.10.200")
	create(t, client, lbService("second"), lbService("plain", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeClusterIP }))
	waitForIngress(t, client, "second", "192.168.10.201")

	svc, err := client.CoreV1().Services("default").Get(context.Background(), "first", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mode := svc.Status.LoadBalancer.Ingress[0].IPMode; mode == nil || *mode != v1.LoadBalancerIPModeVIP {
		t.Errorf("ipMode of first = %v, want VIP", mode)
	}
	if ips := ingressOf(t, client, "plain"); len(ips) != 0 {
		t.Errorf("ClusterIP service got ingress %v", ips)
	}
	e := waitForEvent(t, client, "first", v1.EventTypeNormal, ReasonIPAllocated, "192.168.10.200")
	if e.Source.Component != ControllerComponent {
		t.Errorf("event source = %q, want %q", e.Source.Component, ControllerComponent)
	}

	lease, err := client.CoordinationV1().Leases(metav1.NamespaceSystem).Get(context.Background(), DefaultLeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting the Lease: %v", err)
	}
	if holder := lease.Spec.HolderIdentity; holder == nil || *holder != "k8s-w1" {
		t.Errorf("Lease holder = %v, want k8s-w1", holder)
	}
}

func TestControllerHonoursLoadBalancerIP(t *testing.T) {
	client := fake.NewClientset()
	startController(t, client, "192.168.10.200/29", ControllerOptions{})
	requesting := func(ip string) func(*v1.Service) {
		return func(s *v1.Service) { s.Spec.LoadBalancerIP = ip }
	}

	create(t, client, lbService("wants-206", requesting("192.168.10.206")))
	waitForIngress(t, client, "wants-206", "192.168.10.206")

	create(t, client, lbService("wants-taken", requesting("192.168.10.206")))
	waitForEvent(t, client, "wants-taken", v1.EventTypeWarning, ReasonAllocationFailed, "192.168.10.206 is already used by default/wants-206")
	create(t, client, lbService("wants-outside", requesting("10.0.0.1")))
	waitForEvent(t, client, "wants-outside", v1.EventTypeWarning, ReasonAllocationFailed, "10.0.0.1 is not in pool 192.168.10.200/29")

	// The lowest free address goes to the next service: the requested ones
	// did not move the others.
	create(t, client, lbService("any"))
	waitForIngress(t, client, "any", "192.168.10.200")
	for _, name := range []string{"wants-taken", "wants-outside"} {
		if ips := ingressOf(t, client, name); len(ips) != 0 {
			t.Errorf("%s got %v, want to stay pending", name, ips)
		}
	}

	// Once the holder goes, the waiting service gets the address it asked for.
	deleteService(t, client, "wants-206")
	waitForIngress(t, client, "wants-taken", "192.168.10.206")
}

func TestControllerReleases(t *testing.T) {
	client := fake.NewClientset()
	startController(t, client, "192.168.10.200/29", ControllerOptions{})

	create(t, client, lbService("a"))
	waitForIngress(t, client, "a", "192.168.10.200")
	create(t, client, lbService("b"))
	waitForIngress(t, client, "b", "192.168.10.201")

	deleteService(t, client, "a")
	create(t, client, lbService("c"))
	waitForIngress(t, client, "c", "192.168.10.200")

	// A service that stops being a LoadBalancer loses its status and its
	// address.
	b, err := client.CoreV1().Services("default").Get(context.Background(), "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Spec.Type = v1.ServiceTypeClusterIP
	if _, err := client.CoreV1().Services("default").Update(context.Background(), b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b's status to be cleared", func() (bool, string) {
		ips := ingressOf(t, client, "b")
		return len(ips) == 0, "ingress is " + strings.Join(ips, ",")
	})
	create(t, client, lbService("d"))
	waitForIngress(t, client, "d", "192.168.10.201")
}

func TestControllerPoolExhausted(t *testing.T) {
	client := fake.NewClientset()
	// A /30 has four addresses, all of them usable.
	startController(t, client, "192.168.10.200/30", ControllerOptions{})
	for i, name := range []string{"s0", "s1", "s2", "s3"} {
		create(t, client, lbService(name))
		waitForIngress(t, client, name, netip.AddrFrom4([4]byte{192, 168, 10, byte(200 + i)}).String())
	}

	create(t, client, lbService("late"))
	waitForEvent(t, client, "late", v1.EventTypeWarning, ReasonAllocationFailed, "no available IPs in pool 192.168.10.200/30")
	if ips := ingressOf(t, client, "late"); len(ips) != 0 {
		t.Fatalf("late got %v from an exhausted pool", ips)
	}

	// A released address goes to the pending service.
	deleteService(t, client, "s2")
	waitForIngress(t, client, "late", "192.168.10.202")
}

func TestControllerKeepsAddressesAcrossRestart(t *testing.T) {
	client := fake.NewClientset()
	stop := startController(t, client, "192.168.10.200/29", ControllerOptions{Identity: "before"})
	create(t, client, lbService("m"))
	waitForIngress(t, client, "m", "192.168.10.200")
	create(t, client, lbService("n"))
	waitForIngress(t, client, "n", "192.168.10.201")
	deleteService(t, client, "m")
	create(t, client, lbService("p"))
	waitForIngress(t, client, "p", "192.168.10.200")
	stop()

	// While no controller runs a service appears whose name sorts first.
	create(t, client, lbService("a"))
	client.ClearActions()
	startController(t, client, "192.168.10.200/29", ControllerOptions{Identity: "after"})
	waitForIngress(t, client, "a", "192.168.10.202")
	waitForIngress(t, client, "p", "192.168.10.200")
	waitForIngress(t, client, "n", "192.168.10.201")
	for _, action := range client.Actions() {
		update, ok := action.(clienttesting.UpdateAction)
		if !ok || action.GetResource().Resource != "services" {
			continue
		}
		if name := update.GetObject().(*v1.Service).Name; name != "a" {
			t.Errorf("the restarted controller rewrote service %s (%s %s)", name, action.GetVerb(), action.GetSubresource())
		}
	}
}

func TestControllerLeavesOtherClassesAlone(t *testing.T) {
	client := fake.NewClientset()
	startController(t, client, "192.168.10.200/29", ControllerOptions{})
	other := "example.com/other-lb"
	create(t, client, lbService("other", func(s *v1.Service) { s.Spec.LoadBalancerClass = &other }))
	// The queue is FIFO with one worker: once "mine" has its address,
	// "other" has been looked at.
	create(t, client, lbService("mine"))
	waitForIngress(t, client, "mine", "192.168.10.200")
	if ips := ingressOf(t, client, "other"); len(ips) != 0 {
		t.Errorf("service of class %s got %v", other, ips)
	}
}

func TestControllerServesOwnClassOnly(t *testing.T) {
	client := fake.NewClientset()
	class := "nettrace.io/l2"
	startController(t, client, "192.168.10.200/29", ControllerOptions{LoadBalancerClass: class})
	create(t, client, lbService("classless"))
	create(t, client, lbService("mine", func(s *v1.Service) { s.Spec.LoadBalancerClass = &class }))
	waitForIngress(t, client, "mine", "192.168.10.200")
	if ips := ingressOf(t, client, "classless"); len(ips) != 0 {
		t.Errorf("service without class got %v from a controller of class %s", ips, class)
	}
}

func TestControllerLeaderElection(t *testing.T) {
	client := fake.NewClientset()
	logs := map[string]*logBuffer{"k8s-w1": {}, "k8s-w2": {}}
	stops := map[string]func(){}
	for id, buf := range logs {
		stops[id] = startController(t, client, "192.168.10.200/29", ControllerOptions{
			Identity: id,
			Logger:   slog.New(slog.NewTextHandler(buf, nil)),
		})
	}
	create(t, client, lbService("first"))
	waitForIngress(t, client, "first", "192.168.10.200")

	lease, err := client.CoordinationV1().Leases(metav1.NamespaceSystem).Get(context.Background(), DefaultLeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting the Lease: %v", err)
	}
	leader := *lease.Spec.HolderIdentity
	follower := "k8s-w1"
	if leader == follower {
		follower = "k8s-w2"
	}
	if !slices.Contains([]string{"k8s-w1", "k8s-w2"}, leader) {
		t.Fatalf("Lease holder %q is neither candidate", leader)
	}
	if got := logs[follower].String(); strings.Contains(got, "leading") || strings.Contains(got, "allocated address") {
		t.Fatalf("follower %s allocates while %s leads:\n%s", follower, leader, got)
	}
	if !strings.Contains(logs[leader].String(), "service=default/first ip=192.168.10.200") {
		t.Errorf("leader %s did not log the allocation:\n%s", leader, logs[leader])
	}

	// The leader goes: the follower takes the Lease over and allocates,
	// after reading back what the former leader gave.
	stops[leader]()
	create(t, client, lbService("second"))
	waitForIngress(t, client, "second", "192.168.10.201")
	waitForIngress(t, client, "first", "192.168.10.200")
	if !strings.Contains(logs[follower].String(), "leading: allocating addresses") {
		t.Errorf("follower %s allocated without leading:\n%s", follower, logs[follower])
	}
}

func TestNewControllerRejectsBadLeaseTimings(t *testing.T) {
	_, err := NewController(fake.NewClientset(), netip.MustParsePrefix("192.168.10.200/29"), ControllerOptions{
		Identity: "x", LeaseDuration: time.Second, RenewDeadline: 2 * time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "lease duration") {
		t.Errorf("NewController with renew deadline > lease duration: err = %v, want a lease timing error", err)
	}
}
