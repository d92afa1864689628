package dns

import (
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// metricValue returns the value of the counter or gauge name whose label
// has value (any series when label is ""), or -1 when there is none.
func metricValue(t testing.TB, m *metrics, name, label, value string) float64 {
	t.Helper()
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if label == "" || hasLabel(s, label, value) {
				if s.GetCounter() != nil {
					return s.GetCounter().GetValue()
				}
				return s.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func hasLabel(s *dto.Metric, name, value string) bool {
	for _, l := range s.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestMetricsAndHealth(t *testing.T) {
	up := startUpstream(t)
	srv := startServer(t, Config{Upstreams: []string{up.addr}}, labCluster()...)
	srv.query(t, "udp", "frontend.web.svc.cluster.local.", dns.TypeA)
	srv.query(t, "udp", "nope.web.svc.cluster.local.", dns.TypeA)
	srv.query(t, "udp", "example.org.", dns.TypeA)
	srv.query(t, "udp", "example.org.", dns.TypeA)

	code, body := httpGet(t, "http://"+srv.MetricsAddr()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{
		`nettrace_dns_requests_total{rcode="NOERROR",type="A"} 3`,
		`nettrace_dns_requests_total{rcode="NXDOMAIN",type="A"} 1`,
		`nettrace_dns_cache_hits_total{kind="success"} 1`,
		`nettrace_dns_cache_misses_total 1`,
		`nettrace_dns_forward_duration_seconds_count{rcode="NOERROR",upstream="` + up.addr + `"} 1`,
		`nettrace_dns_upstream_healthy{upstream="` + up.addr + `"} 1`,
		`nettrace_dns_forward_max_concurrent_rejects_total 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	for _, path := range []string{"/health", "/ready"} {
		if code, body := httpGet(t, "http://"+srv.HealthAddr()+path); code != http.StatusOK || body != "OK\n" {
			t.Errorf("GET %s: %d %q, want 200 OK", path, code, body)
		}
	}
}

// The informers keep the zone current: a Service created after the start
// resolves, and one deleted stops resolving.
func TestFollowsTheCluster(t *testing.T) {
	up := startUpstream(t)
	client, watching := servicesWatchedClient(namespace("web"))
	srv := startServerWith(t, Config{Upstreams: []string{up.addr}}, client)
	waitClosed(t, "the service watch", watching)

	const name = "late.web.svc.cluster.local."
	if resp := srv.query(t, "udp", name, dns.TypeA); resp.Rcode != dns.RcodeNameError {
		t.Fatalf("before create: rcode %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
	svcs := client.CoreV1().Services("web")
	if _, err := svcs.Create(t.Context(), service("web", "late", []string{"10.96.0.99"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new service to resolve", func() bool {
		resp := srv.query(t, "udp", name, dns.TypeA)
		return resp.Rcode == dns.RcodeSuccess && len(resp.Answer) == 1 && resp.Answer[0].(*dns.A).A.String() == "10.96.0.99"
	})
	if err := svcs.Delete(t.Context(), "late", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted service to be gone", func() bool {
		return srv.query(t, "udp", name, dns.TypeA).Rcode == dns.RcodeNameError
	})
}

// servicesWatchedClient is a fake clientset holding objs, and a channel
// closed once an informer watches its Services. The fake drops changes made
// between an informer's list and its watch, so a test changes Services only
// after that.
func servicesWatchedClient(objs ...runtime.Object) (*fake.Clientset, <-chan struct{}) {
	client := fake.NewClientset(objs...)
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("services", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err == nil {
			once.Do(func() { close(watching) })
		}
		return true, w, err
	})
	return client, watching
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// Things the server leaves out are logged once, one line each.
func TestLogsWhatItIgnores(t *testing.T) {
	up := startUpstream(t)
	client, watching := servicesWatchedClient(labCluster()...)
	srv := startServerWith(t, Config{Upstreams: []string{up.addr}}, client)
	waitClosed(t, "the service watch", watching)
	wants := []string{
		`service=web/v6only reason="IPv6 cluster IP fd00::20: this server answers IPv4 only, AAAA gets NODATA"`,
		`service=web/dual reason="IPv6 cluster IP fd00::30: this server answers IPv4 only, AAAA gets NODATA"`,
		`service=web/noip reason="no cluster IP: no records"`,
		`service=web/byip reason="externalName \"192.0.2.7\" is not a domain name: no CNAME record"`,
		`endpointslice=web/db-v6 reason="address type IPv6: this server answers IPv4 only"`,
	}
	// The informers hand objects to the log handlers after the caches sync.
	waitFor(t, "the log lines", func() bool {
		for _, want := range wants {
			if !strings.Contains(srv.logs.String(), want) {
				return false
			}
		}
		return true
	})
	// An update that changes nothing ignored logs nothing; one that does logs
	// the new reason. Handlers see updates in order, so once the second is
	// logged the first has been handled.
	svcs := srv.client.CoreV1().Services("web")
	update := func(change func(*corev1.Service)) {
		svc, err := svcs.Get(t.Context(), "v6only", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		change(svc)
		if _, err := svcs.Update(t.Context(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(func(svc *corev1.Service) { svc.Labels = map[string]string{"touched": "yes"} })
	update(func(svc *corev1.Service) { svc.Spec.ClusterIPs = []string{"fd00::21"} })
	waitFor(t, "the changed reason to be logged", func() bool {
		return strings.Contains(srv.logs.String(), "IPv6 cluster IP fd00::21")
	})
	logs := srv.logs.String()
	for _, want := range wants {
		if n := strings.Count(logs, want); n != 1 {
			t.Errorf("log has %d lines with %s, want 1:\n%s", n, want, logs)
		}
	}
	if strings.Contains(logs, "web/frontend") {
		t.Errorf("log mentions a service with nothing ignored:\n%s", logs)
	}
}

// dig, the real client, gets a cluster name and a forwarded name.
func TestDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Fatal("dig is not installed (apt-get install bind9-dnsutils)")
	}
	up := startUpstream(t)
	srv := startServer(t, Config{Upstreams: []string{up.addr}}, labCluster()...)
	host, port, _ := strings.Cut(srv.Addr(), ":")
	for name, want := range map[string]string{
		"frontend.web.svc.cluster.local": "10.96.0.20",
		"www.example.org":                "192.0.2.1",
	} {
		for _, transport := range []string{"+notcp", "+tcp"} {
			out, err := exec.Command(dig, "@"+host, "-p", port, transport, "+short", "+time=2", "+tries=1", name, "A").CombinedOutput()
			if err != nil {
				t.Fatalf("dig %s %s: %v\n%s", transport, name, err, out)
			}
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("dig %s %s: %q, want %q", transport, name, got, want)
			}
		}
	}
}
