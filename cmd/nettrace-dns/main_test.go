package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

func TestMain(m *testing.M) { os.Exit(apitest.Run(m)) }

func TestResolvConfUpstreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "search example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:5\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := resolvConfUpstreams(path)
	want := []string{"192.0.2.53:53", "[2001:db8::53]:53"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("resolvConfUpstreams = %q, %v; want %q", got, err, want)
	}

	if err := os.WriteFile(path, []byte("search example.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := resolvConfUpstreams(path); err == nil {
		t.Error("resolvConfUpstreams accepted a file without nameservers")
	}
}

func TestFlagDefaults(t *testing.T) {
	cmd := newCommand()
	for flag, want := range map[string]string{
		"listen":         ":53",
		"kubeconfig":     "",
		"cluster-domain": "cluster.local",
		"upstream":       "[]",
		"metrics-listen": ":9153",
		"cache-ttl-max":  "30s",
		"max-concurrent": "1000",
		"health-listen":  ":8080",
	} {
		f := cmd.Flags().Lookup(flag)
		if f == nil {
			t.Errorf("no --%s flag", flag)
			continue
		}
		if f.DefValue != want {
			t.Errorf("--%s defaults to %q, want %q", flag, f.DefValue, want)
		}
	}
}

// The command, against a real API server, answers a Service's name and
// forwards another name.
func TestServesTheCluster(t *testing.T) {
	api := apitest.Get(t)
	cs := kubernetes.NewForConfigOrDie(api.Config)
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dnscmd"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("dnscmd").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upstream := startUpstream(t)

	dnsAddr, healthAddr := freeAddr(t), freeAddr(t)
	cmd := newCommand()
	cmd.SetArgs([]string{
		"--kubeconfig", api.Kubeconfig,
		"--listen", dnsAddr,
		"--upstream", upstream,
		"--metrics-listen", "",
		"--health-listen", healthAddr,
	})
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("nettrace-dns: %v", err)
		}
	}()

	waitFor(t, "/ready", func() bool {
		resp, err := http.Get("http://" + healthAddr + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	for name, want := range map[string]string{
		"web.dnscmd.svc.cluster.local.": svc.Spec.ClusterIP,
		"www.example.org.":              "192.0.2.1",
	} {
		resp, _, err := new(dns.Client).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), dnsAddr)
		if err != nil {
			t.Fatalf("asking %s: %v", name, err)
		}
		if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != want {
			t.Errorf("%s: %v, want A %s", name, resp.Answer, want)
		}
	}
}

// startUpstream runs a DNS server on loopback that answers every A question
// with 192.0.2.1, and returns its address.
func startUpstream(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			resp := new(dns.Msg).SetReply(req)
			if q := req.Question[0]; q.Qtype == dns.TypeA {
				resp.Answer = []dns.RR{&dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(192, 0, 2, 1),
				}}
			}
			w.WriteMsg(resp)
		})}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// freeAddr returns a loopback address whose port is free for UDP and TCP.
func freeAddr(t testing.TB) string {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		ln, err := net.Listen("tcp", addr)
		pc.Close()
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port on 127.0.0.1")
	return ""
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
