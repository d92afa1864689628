package loadbalancer

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// lbService returns a LoadBalancer service in namespace default.
func lbService(name string, mutate ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:  v1.ServiceTypeLoadBalancer,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(svc)
	}
	return svc
}

// withStatus sets the service's ingress to ip, ipMode VIP.
func withStatus(ip string) func(*v1.Service) {
	return func(svc *v1.Service) {
		vip := v1.LoadBalancerIPModeVIP
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip, IPMode: &vip}}
	}
}

// node returns a Node whose Ready condition is ready.
func node(name string, ready bool) *v1.Node {
	status := v1.ConditionFalse
	if ready {
		status = v1.ConditionTrue
	}
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status:     v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: status}}},
	}
}

// testLogger logs into the test's output, shown when it fails or with -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// logBuffer is a log destination that tests can search.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond until it returns true, and fails the test with the
// last reason it gave after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ingressOf returns the ingress IPs of a service, read from the API.
func ingressOf(t testing.TB, client kubernetes.Interface, name string) []string {
	t.Helper()
	svc, err := client.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting service %s: %v", name, err)
	}
	var ips []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		ips = append(ips, ing.IP)
	}
	return ips
}

// waitForIngress waits until the service's status holds exactly ip.
func waitForIngress(t testing.TB, client kubernetes.Interface, name, ip string) {
	t.Helper()
	waitFor(t, 5*time.Second, name+" to get "+ip, func() (bool, string) {
		ips := ingressOf(t, client, name)
		return len(ips) == 1 && ips[0] == ip, "ingress is " + strings.Join(ips, ",")
	})
}

// waitForEvent waits for an Event on service name with reason and a
// message containing text, and returns it.
func waitForEvent(t testing.TB, client kubernetes.Interface, name, eventType, reason, text string) v1.Event {
	t.Helper()
	var found v1.Event
	waitFor(t, 5*time.Second, "event "+reason+" on "+name, func() (bool, string) {
		events, err := client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range events.Items {
			if e.InvolvedObject.Kind == "Service" && e.InvolvedObject.Name == name && e.Type == eventType &&
				e.Reason == reason && strings.Contains(e.Message, text) {
				found = e
				return true, ""
			}
			seen = append(seen, e.InvolvedObject.Name+": "+e.Reason+": "+e.Message)
		}
		return false, "events: " + strings.Join(seen, "; ")
	})
	return found
}
