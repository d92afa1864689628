package loadbalancer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

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

// TestSpeakerTakesOverFromADeadSpeaker kills, in effect, the announcer's
// speaker while its node stays Ready: it stops answering ARP and its Lease
// is left behind, as when the node daemon is killed. Once the Lease
// expires, the other node's speaker takes the address over and tells the
// client with gratuitous ARP. Against a real API server, for the Leases'
// label-selected watch.
func TestSpeakerTakesOverFromADeadSpeaker(t *testing.T) {
	config := apitest.Get(t).Config
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	// The shared server outlives the test: nodes, a namespace and a Lease
	// namespace of its own.
	ctx := context.Background()
	suffix := fmt.Sprint(time.Now().UnixNano() % 1000000)
	names := []string{"lb-dead-" + suffix + "-w1", "lb-dead-" + suffix + "-w2"}
	var nsNames []string
	for _, prefix := range []string{"lb-dead-", "lb-members-"} {
		ns, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nsNames = append(nsNames, ns.Name)
	}
	svcNS, memberNS := nsNames[0], nsNames[1]
	t.Cleanup(func() {
		client.CoreV1().Services(svcNS).Delete(context.Background(), "web", metav1.DeleteOptions{})
		client.CoordinationV1().Leases(memberNS).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
		for _, name := range names {
			client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
		for _, ns := range nsNames {
			client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		}
	})
	for _, name := range names {
		created, err := client.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = node(name, true).Status
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := client.CoreV1().Services(svcNS).Create(ctx, lbService("web", func(s *v1.Service) { s.Namespace = svcNS }), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	withStatus(lbIP)(svc)
	if _, err := client.CoreV1().Services(svcNS).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	n := newL2Net(t)
	hosts := map[string]host{names[0]: n.addHost("n1", "192.168.10.101"), names[1]: n.addHost("n2", "192.168.10.102")}
	cl := n.addHost("cl", clientIP)
	watch := n.watchARP(cl)
	owner, _ := Announcer(netip.MustParseAddr(lbIP), names)
	other := map[string]string{names[0]: names[1], names[1]: names[0]}[owner]
	otherMAC := hosts[other].mac.String()

	const duration = 2 * time.Second
	// The owner's client cannot delete Leases: its speaker stops as a
	// killed one would, without resigning.
	dying := rest.CopyConfig(config)
	dying.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodDelete && strings.Contains(r.URL.Path, "/leases/") {
				return nil, errors.New("the speaker's process is gone")
			}
			return rt.RoundTrip(r)
		})
	})
	dyingClient, err := kubernetes.NewForConfig(dying)
	if err != nil {
		t.Fatal(err)
	}
	tune := func(o *SpeakerOptions) { o.MemberNamespace, o.MemberLeaseDuration = memberNS, duration }
	logs := map[string]*logBuffer{owner: {}, other: {}}
	stopOwner := startSpeaker(t, dyingClient, owner, hosts[owner], logs[owner], tune)
	startSpeaker(t, client, other, hosts[other], logs[other], tune)

	waitFor(t, 5*time.Second, owner+" to announce "+lbIP, func() (bool, string) {
		return strings.Contains(logs[owner].String(), "taking over address"), logs[owner].String()
	})
	if strings.Contains(logs[other].String(), "taking over address") {
		t.Fatalf("%s announces %s too:\n%s", other, lbIP, logs[other])
	}
	stopOwner()
	died := time.Now()
	waitFor(t, 2*duration, other+" to take "+lbIP+" over", func() (bool, string) {
		return strings.Contains(logs[other].String(), "taking over address"), logs[other].String()
	})
	took := time.Since(died)
	if !strings.Contains(logs[owner].String(), "removing the speaker's Lease failed") {
		t.Errorf("the owner resigned after all: the test shows no expiry:\n%s", logs[owner])
	}
	// The client learns the new MAC from the gratuitous ARP.
	waitFor(t, 2*time.Second, "the client to see a gratuitous ARP from "+otherMAC, func() (bool, string) {
		garps := watch.seen(func(f arpFrame) bool {
			return !f.outgoing && f.op == layers.ARPReply && f.at.After(died) && f.senderIP.String() == lbIP &&
				f.senderMAC.String() == otherMAC && f.ethDst.String() == "ff:ff:ff:ff:ff:ff"
		})
		return len(garps) > 0, "ARP seen:" + watch.String()
	})
	t.Logf("%s took %s over %s after its announcer's speaker died (Lease duration %s)", other, lbIP, took.Round(10*time.Millisecond), duration)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
