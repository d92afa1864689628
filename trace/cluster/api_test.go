package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-nettrace/nettrace/internal/apitest"
	"github.com/kubectl-nettrace/nettrace/trace"
)

func TestMain(m *testing.M) { os.Exit(apitest.Run(m)) }

// apiServer starts the package's API server once and installs the CRD.
func apiServer(t *testing.T) *rest.Config {
	t.Helper()
	cfg := rest.CopyConfig(apitest.Get(t).Config)
	cfg.QPS, cfg.Burst = 200, 400
	applyManifest(t, cfg, "../../deploy/crds/nettrace.yaml", "")
	waitServed(t, cfg)
	return cfg
}

// The resources the test manifests hold.
var manifestResources = map[string]schema.GroupVersionResource{
	"CustomResourceDefinition": {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"Namespace":                {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":           {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":              {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":       {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Role":                     {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"DaemonSet":                {Group: "apps", Version: "v1", Resource: "daemonsets"},
}

// applyManifest creates every object of a manifest file that does not
// exist yet, namespaced ones in namespace when they name none.
func applyManifest(t *testing.T, cfg *rest.Config, path, namespace string) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(cfg)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for doc := range bytes.SplitSeq(data, []byte("\n---\n")) {
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("parsing %s: %v", path, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("decoding an object of %s: %v", path, err)
		}
		gvr, ok := manifestResources[u.GetKind()]
		if !ok {
			t.Fatalf("%s: no resource known for kind %s", path, u.GetKind())
		}
		res := dynamic.ResourceInterface(dyn.Resource(gvr))
		switch kind := u.GetKind(); {
		case u.GetNamespace() != "":
			res = dyn.Resource(gvr).Namespace(u.GetNamespace())
		case kind == "Role" || kind == "ServiceAccount" || kind == "DaemonSet":
			res = dyn.Resource(gvr).Namespace(namespace)
		}
		if _, err := res.Create(context.Background(), u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("creating %s %s of %s: %v", u.GetKind(), u.GetName(), path, err)
		}
	}
}

// waitServed waits until the API server serves NetTraces.
func waitServed(t *testing.T, cfg *rest.Config) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(cfg)
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true,
		func(ctx context.Context) (bool, error) {
			_, err := dyn.Resource(Resource).List(ctx, metav1.ListOptions{Limit: 1})
			return err == nil, nil
		})
	if err != nil {
		t.Fatalf("the API server does not serve NetTraces: %v", err)
	}
}

// newNamespace creates a namespace with its default ServiceAccount, which
// no controller makes in the test server.
func newNamespace(t *testing.T, cfg *rest.Config, name string) {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := cs.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// sampleTrace is a NetTrace as the plugin creates it.
func sampleTrace(namespace string) *NetTrace {
	return &NetTrace{
		ObjectMeta: metav1.ObjectMeta{Name: "trace-client-abc123", Namespace: namespace},
		Spec: Spec{
			Source: "client", SourceNode: "k8s-w1",
			Target: Target{Given: "svc/nginx-test", Kind: TargetService, Namespace: namespace, Name: "nginx-test",
				Address: "10.111.34.193", Port: 80,
				Endpoints: []Endpoint{{Pod: namespace + "/nginx-a", Address: "172.16.19.2", Port: 80, Node: "k8s-w2"}}},
			Flow:    FlowSpec{Proto: trace.TCP, Dst: "10.111.34.193", DstPort: 80},
			Mode:    ModeProbe,
			Timeout: metav1.Duration{Duration: 5 * time.Second},
			Nodes:   []string{"k8s-w1", "k8s-w2"},
		},
	}
}

func TestNetTraceStatusRoundTrip(t *testing.T) {
	cfg := apiServer(t)
	newNamespace(t, cfg, "roundtrip")
	c := NewClient(dynamic.NewForConfigOrDie(cfg))
	ctx := context.Background()

	created, err := c.Create(ctx, sampleTrace("roundtrip"))
	if err != nil {
		t.Fatal(err)
	}
	if created.Status.Phase != "" || created.UID == "" {
		t.Fatalf("created %+v", created.ObjectMeta)
	}
	flow := trace.Flow{Proto: trace.TCP, Src: netip.MustParseAddr("172.16.198.1"), SrcPort: 40123,
		Dst: netip.MustParseAddr("10.111.34.193"), DstPort: 80}
	hops := append(ruleHops(3), trace.Hop{
		Time: time.Date(2026, 11, 26, 5, 0, 0, 123456789, time.UTC), Node: "k8s-w1", Kind: trace.HopNAT, Source: "conntrack",
		NAT: &trace.NAT{Type: "DNAT", From: netip.MustParseAddrPort("10.111.34.193:80"), To: netip.MustParseAddrPort("172.16.19.2:80"),
			Original: trace.Tuple{Proto: trace.TCP, Src: netip.MustParseAddrPort("172.16.198.1:40123"), Dst: netip.MustParseAddrPort("10.111.34.193:80")},
			Reply:    trace.Tuple{Proto: trace.TCP, Src: netip.MustParseAddrPort("172.16.19.2:80"), Dst: netip.MustParseAddrPort("172.16.198.1:40123")}},
	}, trace.Hop{
		Time: time.Date(2026, 11, 26, 5, 0, 0, 2000, time.UTC), Node: "k8s-w1", Kind: trace.HopRoute, Source: "fib",
		Route: &trace.Route{Dst: netip.MustParsePrefix("172.16.19.0/24"), Gateway: netip.MustParseAddr("192.168.10.102"),
			Dev: "tunl0", Type: "unicast", Onlink: true, Text: "172.16.19.0/24 via 192.168.10.102 dev tunl0 onlink"},
	})
	updated, err := c.UpdateStatus(ctx, "roundtrip", created.Name, func(nt *NetTrace) bool {
		nt.Status.Phase, nt.Status.Flow = PhaseCollecting, &flow
		nt.Status.Probe = &ProbeStatus{Started: time.Now(), Finished: time.Now(), Result: trace.Replied, Reply: "SYN-ACK"}
		*nt.Status.SetNode("k8s-w1") = NodeStatus{Node: "k8s-w1", Armed: true, Done: true, Hops: hops,
			Losses: []trace.Loss{{Node: "k8s-w1", Source: "nflog", Count: 2, Detail: "dropped by the kernel"}},
			Pcap:   []byte{0x0a, 0x0d, 0x0d, 0x0a}}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if updated.Generation != created.Generation {
		t.Errorf("a status write changed the generation from %d to %d", created.Generation, updated.Generation)
	}

	got, err := c.Get(ctx, "roundtrip", created.Name)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(hops)
	back, _ := json.Marshal(got.Status.Node("k8s-w1").Hops)
	if !bytes.Equal(back, want) {
		t.Fatalf("hops changed on their way through the API server:\n got %s\nwant %s", back, want)
	}
	e := got.Status.Node("k8s-w1")
	if *got.Status.Flow != flow || got.Status.Phase != PhaseCollecting || string(e.Pcap) != "\n\r\r\n" || len(e.Losses) != 1 {
		t.Fatalf("status read back as %+v, node %+v", got.Status, e)
	}

	// The spec is immutable, and the main resource does not write status.
	changed := copyTrace(got)
	changed.Spec.Nodes = append(changed.Spec.Nodes, "k8s-m")
	changed.Status.Phase = PhaseFailed
	u, err := ToUnstructured(changed)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dynamic.NewForConfigOrDie(cfg).Resource(Resource).Namespace("roundtrip").Update(ctx, u, metav1.UpdateOptions{})
	if err == nil || !strings.Contains(err.Error(), "spec is immutable") {
		t.Fatalf("updating the spec: got %v, want it refused as immutable", err)
	}
	got.Labels = map[string]string{"touched": "yes"}
	got.Status.Phase = PhaseFailed
	u, _ = ToUnstructured(got)
	written, err := dynamic.NewForConfigOrDie(cfg).Resource(Resource).Namespace("roundtrip").Update(ctx, u, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nt, _ := FromUnstructured(written); nt.Status.Phase != PhaseCollecting {
		t.Fatalf("an update of the main resource set the phase to %q", nt.Status.Phase)
	}

	if err := c.Delete(ctx, "roundtrip", created.Name, created.UID); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "roundtrip", created.Name, created.UID); err != nil {
		t.Fatalf("deleting a NetTrace that is gone: %v", err)
	}
}

// copyTrace copies t through JSON, for a test to change.
func copyTrace(t *NetTrace) *NetTrace {
	b, _ := json.Marshal(t)
	c := &NetTrace{}
	_ = json.Unmarshal(b, c)
	return c
}

func TestNetTraceSchemaRefusesBadSpecs(t *testing.T) {
	cfg := apiServer(t)
	newNamespace(t, cfg, "schema")
	c := NewClient(dynamic.NewForConfigOrDie(cfg))
	for name, edit := range map[string]func(*NetTrace){
		"kind":  func(nt *NetTrace) { nt.Spec.Target.Kind = "deployment" },
		"proto": func(nt *NetTrace) { nt.Spec.Flow.Proto = "sctp" },
		"port":  func(nt *NetTrace) { nt.Spec.Flow.DstPort = 70000 },
		"nodes": func(nt *NetTrace) { nt.Spec.Nodes = nil },
		"mode":  func(nt *NetTrace) { nt.Spec.Mode = "replay" },
		"two-sources": func(nt *NetTrace) {
			nt.Spec.SourceIP, nt.Spec.Mode = "192.168.10.1", ModeLive
		},
		"no-source": func(nt *NetTrace) { nt.Spec.Source = "" },
		"outside-probed": func(nt *NetTrace) {
			nt.Spec.Source, nt.Spec.SourceIP = "", "192.168.10.1"
		},
	} {
		nt := sampleTrace("schema")
		nt.Name = "bad-" + name
		edit(nt)
		if _, err := c.Create(context.Background(), nt); !apierrors.IsInvalid(err) {
			t.Errorf("a NetTrace with a bad %s: got %v, want it refused as invalid", name, err)
		}
	}
	outside := sampleTrace("schema")
	outside.Name = "from-outside"
	outside.Spec.Source, outside.Spec.SourceIP, outside.Spec.Mode = "", "192.168.10.1", ModeLive
	created, err := c.Create(context.Background(), outside)
	if err != nil {
		t.Fatalf("a live NetTrace from outside the cluster: %v", err)
	}
	if created.Spec.SourceIP != "192.168.10.1" {
		t.Errorf("the API server kept spec %+v, want sourceIP 192.168.10.1", created.Spec)
	}
}

func TestNetTracePrinterColumns(t *testing.T) {
	cfg := apiServer(t)
	newNamespace(t, cfg, "columns")
	c := NewClient(dynamic.NewForConfigOrDie(cfg))
	ctx := context.Background()
	created, err := c.Create(ctx, sampleTrace("columns"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateStatus(ctx, "columns", created.Name, func(nt *NetTrace) bool {
		nt.Status.Phase = PhaseDone
		nt.Status.Probe = &ProbeStatus{Result: trace.Replied}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", cfg.Host+"/apis/nettrace.dev/v1alpha1/namespaces/columns/nettraces", nil)
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var table metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&table); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, col := range table.ColumnDefinitions {
		names = append(names, col.Name)
	}
	if want := []string{"Name", "Source", "Source IP", "Target", "Mode", "Nodes", "Phase", "Result", "Age"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("columns %v, want %v", names, want)
	}
	if len(table.Rows) != 1 {
		t.Fatalf("%d rows, want 1", len(table.Rows))
	}
	row := table.Rows[0].Cells
	if row[1] != "client" || row[3] != "svc/nginx-test" || row[6] != "Done" || row[7] != "replied" {
		t.Fatalf("row %v", row)
	}
}

func TestStatusThatFitsIsAccepted(t *testing.T) {
	cfg := apiServer(t)
	newNamespace(t, cfg, "size")
	c := NewClient(dynamic.NewForConfigOrDie(cfg))
	ctx := context.Background()
	nt := sampleTrace("size")
	nt.Spec.Nodes = []string{"k8s-w1"}
	created, err := c.Create(ctx, nt)
	if err != nil {
		t.Fatal(err)
	}
	huge := NodeStatus{Node: "k8s-w1", Armed: true, Done: true, Hops: ruleHops(12000)}
	_, err = c.UpdateStatus(ctx, "size", created.Name, func(nt *NetTrace) bool {
		*nt.Status.SetNode("k8s-w1") = huge
		return true
	})
	if err == nil {
		t.Fatal("the API server took a status of 12000 hops: the test does not show why Fit is needed")
	}
	huge.Fit(NodeBudget(1))
	_, err = c.UpdateStatus(ctx, "size", created.Name, func(nt *NetTrace) bool {
		*nt.Status.SetNode("k8s-w1") = huge
		return true
	})
	if err != nil {
		t.Fatalf("writing a status fitted to its budget: %v", err)
	}
	got, err := c.Get(ctx, "size", created.Name)
	if err != nil {
		t.Fatal(err)
	}
	if e := got.Status.Node("k8s-w1"); len(e.Hops) != len(huge.Hops) || len(e.Losses) != 1 {
		t.Fatalf("read back %d hops and %v, want %d hops and a loss", len(e.Hops), e.Losses, len(huge.Hops))
	}
}

// impersonating returns cfg acting as user.
func impersonating(cfg *rest.Config, user string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user}
	return c
}

// runAs runs a trace from the pod client to svc/web as user.
func runAs(t *testing.T, cfg *rest.Config, user, namespace string) (*trace.Path, error) {
	t.Helper()
	as := impersonating(cfg, user)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Run(ctx, Options{
		Kube:       kubernetes.NewForConfigOrDie(as),
		Dynamic:    dynamic.NewForConfigOrDie(as),
		Namespace:  namespace,
		Source:     "client",
		Target:     "svc/web",
		Timeout:    time.Second,
		ArmTimeout: time.Second,
	})
}

func TestRunRBAC(t *testing.T) {
	cfg := apiServer(t)
	const ns = "rbac"
	newNamespace(t, cfg, ns)
	applyManifest(t, cfg, "../../deploy/rbac-user.yaml", ns)
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	bind := func(user, role string) {
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: user}},
		}
		if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// reader may read pods and services, but not trace.
	reader := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "reader"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "services"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list"}},
		},
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, reader, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bind("carol", "reader")
	bind("alice", "nettrace-user")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec:       corev1.PodSpec{NodeName: "k8s-w1", Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	created, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.PodIP, created.Status.PodIPs = "172.16.198.1", []corev1.PodIP{{IP: "172.16.198.1"}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	_, err = runAs(t, cfg, "mallory", ns)
	if !errors.Is(err, ErrForbidden) || !strings.HasPrefix(err.Error(), `forbidden: you may not get pods in namespace "rbac": `) ||
		!strings.Contains(err.Error(), `User "mallory" cannot get resource "pods"`) {
		t.Errorf("mallory, who may do nothing: got %v, want forbidden to get pods with the server's message", err)
	}
	_, err = runAs(t, cfg, "carol", ns)
	if !errors.Is(err, ErrForbidden) ||
		!strings.HasPrefix(err.Error(), `forbidden: you may not create nettraces.nettrace.dev in namespace "rbac": `) ||
		!strings.Contains(err.Error(), `User "carol" cannot create resource "nettraces" in API group "nettrace.dev"`) {
		t.Errorf("carol, who may read but not trace: got %v, want forbidden to create nettraces with the server's message", err)
	}
	// alice may trace: the NetTrace is created, no agent answers, and
	// it is deleted again.
	_, err = runAs(t, cfg, "alice", ns)
	if !errors.Is(err, ErrCannotRun) || err.Error() != "node k8s-w1: no nettrace agent answered within 1s" {
		t.Errorf("alice, a nettrace-user, with no agent running: got %v, want that no agent answered", err)
	}
	left, err := NewClient(dynamic.NewForConfigOrDie(cfg)).List(ctx, ns)
	if err != nil || len(left) != 0 {
		t.Errorf("NetTraces left after the trace: %d, %v", len(left), err)
	}
}

func TestAgentRBACIsLeastPrivilege(t *testing.T) {
	cfg := apiServer(t)
	applyManifest(t, cfg, "../../deploy/agent/rbac.yaml", "")
	newNamespace(t, cfg, "agent-rbac")
	// The DaemonSet is a valid object for this API server.
	ds := dynamic.NewForConfigOrDie(cfg).Resource(manifestResources["DaemonSet"]).Namespace("nettrace-system")
	data, err := os.ReadFile("../../deploy/agent/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Create(context.Background(), u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatalf("the DaemonSet does not validate: %v", err)
	}

	cs := kubernetes.NewForConfigOrDie(cfg)
	for _, user := range []string{"nettrace-agent", "system:serviceaccount:nettrace-system:nettrace-agent"} {
		for _, c := range []struct {
			verb, group, resource, sub, namespace string
			allowed                               bool
		}{
			{"watch", "nettrace.dev", "nettraces", "", "", true},
			{"update", "nettrace.dev", "nettraces", "status", "agent-rbac", true},
			{"patch", "nettrace.dev", "nettraces", "status", "agent-rbac", true},
			{"delete", "nettrace.dev", "nettraces", "", "agent-rbac", true},
			{"list", "", "pods", "", "", true},
			{"get", "", "nodes", "", "", true},
			{"watch", "discovery.k8s.io", "endpointslices", "", "", true},
			{"create", "nettrace.dev", "nettraces", "", "agent-rbac", false},
			{"create", "", "pods", "", "agent-rbac", false},
			{"get", "", "secrets", "", "agent-rbac", false},
			{"create", "", "pods", "exec", "agent-rbac", false},
		} {
			review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: c.verb, Group: c.group,
					Resource: c.resource, Subresource: c.sub, Namespace: c.namespace},
			}}
			if strings.HasPrefix(user, "system:serviceaccount:") {
				review.Spec.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:nettrace-system"}
			}
			got, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), review, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Allowed != c.allowed {
				t.Errorf("%s may %s %s/%s %s: %t, want %t", user, c.verb, c.resource, c.sub, c.group, got.Status.Allowed, c.allowed)
			}
		}
	}
}
