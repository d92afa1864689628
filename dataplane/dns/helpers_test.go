package dns

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
)

// testUpstream is a DNS server on loopback that a test controls: it
// answers with answer, counts the questions it gets, and can be stopped.
// Health checks (questions for ".") are answered but not counted.
type testUpstream struct {
	addr    string
	udp     *dns.Server
	tcp     *dns.Server
	queries atomic.Int64 // questions other than health checks
	tcpSeen atomic.Int64 // of them, those over TCP

	mu     sync.Mutex
	answer func(req *dns.Msg, overTCP bool) *dns.Msg
}

// startUpstream starts a test upstream on a free port of 127.0.0.1. By
// default it answers every A question with 192.0.2.1, TTL 60.
func startUpstream(t testing.TB) *testUpstream {
	t.Helper()
	u := &testUpstream{answer: func(req *dns.Msg, _ bool) *dns.Msg {
		resp := new(dns.Msg).SetReply(req)
		if req.Question[0].Qtype == dns.TypeA {
			resp.Answer = []dns.RR{newRR(req.Question[0].Name + " 60 IN A 192.0.2.1")}
		}
		return resp
	}}
	pc, ln, err := listenDNS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		_, overTCP := w.RemoteAddr().(*net.TCPAddr)
		if req.Question[0].Name != "." {
			u.queries.Add(1)
			if overTCP {
				u.tcpSeen.Add(1)
			}
		}
		u.mu.Lock()
		answer := u.answer
		u.mu.Unlock()
		if resp := answer(req, overTCP); resp != nil {
			w.WriteMsg(resp)
		}
	})
	u.udp = startDNSServer(t, &dns.Server{PacketConn: pc, Handler: handler})
	u.tcp = startDNSServer(t, &dns.Server{Listener: ln, Handler: handler})
	t.Cleanup(u.stop)
	return u
}

func startDNSServer(t testing.TB, srv *dns.Server) *dns.Server {
	t.Helper()
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	return srv
}

// setAnswer replaces how the upstream answers.
func (u *testUpstream) setAnswer(answer func(req *dns.Msg, overTCP bool) *dns.Msg) {
	u.mu.Lock()
	u.answer = answer
	u.mu.Unlock()
}

// stop takes the upstream down: its port refuses from then on.
func (u *testUpstream) stop() {
	u.udp.Shutdown()
	u.tcp.Shutdown()
}

// silentUpstream binds a UDP port on loopback that reads questions and never
// answers, and returns its address and a count of questions read.
func silentUpstream(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var reads atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			reads.Add(1)
		}
	}()
	return pc.LocalAddr().String(), &reads
}

// testServer runs a Server with the objects in a fake clientset, on
// loopback, until the test ends.
type testServer struct {
	*Server
	client *fake.Clientset
	logs   *syncBuffer
}

func startServer(t *testing.T, cfg Config, objs ...runtime.Object) *testServer {
	t.Helper()
	return startServerWith(t, cfg, fake.NewClientset(objs...))
}

func startServerWith(t *testing.T, cfg Config, client *fake.Clientset) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Listen = "127.0.0.1:0"
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.HealthListen = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	srv, err := NewServer(cfg, client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "informers to sync", srv.cluster.HasSynced)
	return &testServer{Server: srv, client: client, logs: logs}
}

// query asks the server name/qtype over net ("udp" or "tcp").
func (s *testServer) query(t *testing.T, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return exchange(t, network, s.Addr(), name, qtype)
}

func exchange(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	req := new(dns.Msg).SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(req, addr)
	if err != nil {
		t.Fatalf("asking %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return resp
}

// testHandler is a handler on a synced fake cluster holding objs, with one
// test upstream, without sockets of its own.
func testHandler(t testing.TB, up string, objs ...runtime.Object) *handler {
	t.Helper()
	cluster, err := NewCluster(fake.NewClientset(objs...), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	cluster.Start(stop)
	t.Cleanup(func() {
		close(stop)
		cluster.Shutdown()
	})
	waitFor(t, "informers to sync", cluster.HasSynced)
	return newTestHandler(cluster, up)
}

// newTestHandler is a handler with the default configuration on cluster,
// forwarding to up.
func newTestHandler(cluster *Cluster, up string) *handler {
	m := newMetrics()
	cfg := withDefaults(Config{Upstreams: []string{up}, Logger: discardLogger()})
	return &handler{
		zone:      &zone{origin: "cluster.local.", ttl: cfg.TTL, cluster: cluster},
		cache:     newAnswerCache(cfg.CacheTTLMax, cfg.CacheSize),
		forwarder: newForwarder([]string{up}, cfg.ForwardTimeout, cfg.HealthCheckInterval, cfg.MaxConcurrent, m, cfg.Logger),
		metrics:   m,
		log:       cfg.Logger,
	}
}

func discardLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// recorder is a dns.ResponseWriter that keeps the answer, packed and
// unpacked again as a client would see it.
type recorder struct {
	remote net.Addr
	msg    *dns.Msg
	wire   []byte
}

func (r *recorder) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error {
	wire, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = r.Write(wire)
	return err
}
func (r *recorder) Write(b []byte) (int, error) {
	r.wire = slices.Clone(b)
	msg := new(dns.Msg)
	if err := msg.Unpack(b); err != nil {
		return 0, err
	}
	r.msg = msg
	return len(b), nil
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

func udpClient() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000} }

// ask passes a question for name/qtype to h as a UDP client with EDNS would.
func ask(t testing.TB, h *handler, name string, qtype uint16) *dns.Msg {
	t.Helper()
	req := new(dns.Msg).SetQuestion(name, qtype)
	req.SetEdns0(4096, false)
	w := &recorder{remote: udpClient()}
	h.ServeDNS(w, req)
	if w.msg == nil {
		t.Fatalf("no answer to %s %s", name, dns.TypeToString[qtype])
	}
	return w.msg
}

// rrStrings formats records as "name ttl class type data", space separated.
func rrStrings(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

// newRR parses a record of a test fixture; it may run on a server goroutine,
// so a mistake in the fixture panics.
func newRR(s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Kubernetes objects of the tests.

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func service(ns, name string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIPs: clusterIPs, Ports: ports},
	}
	if len(clusterIPs) > 0 {
		svc.Spec.ClusterIP = clusterIPs[0]
	}
	return svc
}

func externalNameService(ns, name, target string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target},
	}
}

func port(name string, proto corev1.Protocol, number int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: number, TargetPort: intstr.FromInt32(number)}
}

// slice is an EndpointSlice of service ns/svc with the given endpoints.
func slice(ns, svc, name string, addrType discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: addrType,
		Endpoints:   eps,
		Ports:       ports,
	}
}

func slicePort(name string, proto corev1.Protocol, number int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &number}
}

// ep is an endpoint with one address; hostname "" leaves it unset.
func ep(addr, hostname string, ready bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
	if hostname != "" {
		e.Hostname = &hostname
	}
	return e
}
