package servicenat

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

// benchNamespace holds BenchmarkVersusKubeProxy's services.
const benchNamespace = "bench"

// createWorkers bounds the concurrent API calls that create the benchmark's
// services.
const createWorkers = 32

// BenchmarkVersusKubeProxy times the reference Proxier against the real
// kube-proxy (iptables mode), each in its own network namespace, one after
// the other, against the same API server holding N services of 5
// endpoints, with the lab's options (no localhost NodePorts): the time from
// start to the first complete sync (process or Proxier start, informer
// lists, full sync), the full sync alone, and partial syncs after one
// service's endpoints changed (the sync alone, and from the API update to
// the rules in place). Both rulesets are compared once the full syncs are
// done: they must be equal, large-cluster mode included. The legacy backend
// runs -bench-services services, the nft backend -bench-nft-services. Each
// iteration starts both proxies from scratch; the metrics are medians.
// scripts/bench/servicenat-vs-kubeproxy.sh runs it and prints the ratios.
func BenchmarkVersusKubeProxy(b *testing.B) {
	binary := kubeProxyBinary(b)
	server := apitest.Get(b)
	client := newClient(b, bulkConfig(server.Config))
	createNode(b, client)
	ensureNamespace(b, client, benchNamespace)
	type run struct {
		backend  Backend
		services int
	}
	runs := []run{{BackendLegacy, *benchServices}, {BackendNFT, *benchNFTServices}}
	// Services are only ever added: the smaller run goes first.
	slices.SortFunc(runs, func(a, b run) int { return cmp.Compare(a.services, b.services) })
	created := 0
	moved := false
	for _, run := range runs {
		b.Run(fmt.Sprintf("%s/services=%d", run.backend, run.services), func(b *testing.B) {
			if created > run.services {
				b.Fatalf("%d services exist already, more than the %d of this run", created, run.services)
			}
			start := time.Now()
			createBenchServices(b, client, created, run.services)
			b.Logf("created services %d to %d through the API in %v", created, run.services, time.Since(start).Round(time.Millisecond))
			created = run.services
			m := metricSamples{}
			for b.Loop() {
				compareOnce(b, binary, server, client, run.backend, run.services, &moved, m)
			}
			m.report(b)
		})
	}
}

// bulkConfig is cfg without client-side rate limiting, for creating
// thousands of objects.
func bulkConfig(cfg *rest.Config) *rest.Config {
	bulk := rest.CopyConfig(cfg)
	bulk.QPS, bulk.Burst = 5000, 10000
	return bulk
}

// benchObjects returns the i-th benchmark service, a ClusterIP service with
// 5 ready endpoints on three other nodes. ClusterIPs start at 10.100.0.0,
// clear of the fixtures' and of kubernetes' 10.96.0.1.
func benchObjects(i int) (*v1.Service, *discovery.EndpointSlice) {
	name := fmt.Sprintf("svc-%05d", i)
	ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256)
	var eps []discovery.Endpoint
	for j := range benchEndpoints {
		k := i*benchEndpoints + j
		eps = append(eps, ready(fmt.Sprintf("172.16.%d.%d", k/250%256, k%250+2), fmt.Sprintf("node-%d", k%3)))
	}
	return makeService(benchNamespace, name, ip, nil),
		makeSlice(benchNamespace, name, name+"-abc", []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}, eps...)
}

// createBenchServices creates the benchmark services from..to-1 and their
// EndpointSlices with a bounded pool of workers. They stay until the API
// server goes away with the test binary.
func createBenchServices(b *testing.B, client kubernetes.Interface, from, to int) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	work := make(chan int)
	errs := make(chan error, createWorkers)
	var wg sync.WaitGroup
	for range createWorkers {
		wg.Go(func() {
			for i := range work {
				svc, slice := benchObjects(i)
				err := createRetrying(ctx, "service "+svc.Name, func() error {
					_, err := client.CoreV1().Services(benchNamespace).Create(ctx, svc, metav1.CreateOptions{})
					return err
				})
				if err == nil {
					err = createRetrying(ctx, "EndpointSlice "+slice.Name, func() error {
						_, err := client.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, slice, metav1.CreateOptions{})
						return err
					})
				}
				if err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
feed:
	for i := from; i < to; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// createRetrying calls create until it succeeds or finds the object already
// there (a retry of a create whose answer was lost), a few times: the
// loaded API server sometimes drops a connection.
func createRetrying(ctx context.Context, what string, create func() error) error {
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		if err = create(); err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("creating %s: %w", what, err)
		case <-time.After(time.Duration(attempt) * time.Second):
		}
	}
	return fmt.Errorf("creating %s: %w", what, err)
}

// moveFirstEndpoint changes the first endpoint of the first benchmark
// service, back and forth: one service's change for a partial sync.
func moveFirstEndpoint(b *testing.B, client kubernetes.Interface, moved *bool) {
	b.Helper()
	ctx := context.Background()
	_, want := benchObjects(0)
	slice, err := client.DiscoveryV1().EndpointSlices(benchNamespace).Get(ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	*moved = !*moved
	slice.Endpoints[0].Addresses[0] = want.Endpoints[0].Addresses[0]
	if *moved {
		slice.Endpoints[0].Addresses[0] = "172.16.255.250"
	}
	if _, err := client.DiscoveryV1().EndpointSlices(benchNamespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		b.Fatalf("moving an endpoint: %v", err)
	}
}

// partialSamples is how many partial syncs each proxy makes per iteration.
const partialSamples = 3

// metricSamples collects the benchmark's measurements by metric name.
type metricSamples map[string][]float64

func (m metricSamples) add(name string, v float64) { m[name] = append(m[name], v) }

func (m metricSamples) median(name string) float64 {
	v := slices.Sorted(slices.Values(m[name]))
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// report reports the median of each metric, and the ratio of the startups.
func (m metricSamples) report(b *testing.B) {
	for name := range m {
		b.ReportMetric(m.median(name), name)
	}
	if kp := m.median("kp-startup-s"); kp > 0 {
		b.ReportMetric(m.median("ref-startup-s")/kp, "startup-ratio")
	}
	b.ReportMetric(0, "ns/op")
}

// compareOnce starts the reference in a fresh namespace, times its first
// sync and partial syncs, stops it; then does the same with kube-proxy,
// comparing both rulesets between its full and its partial syncs, when both
// reflect the same API state. Its namespaces and processes are gone when it
// returns.
func compareOnce(b *testing.B, binary string, server *apitest.Server, client kubernetes.Interface, backend Backend, services int, moved *bool, m metricSamples) {
	b.Helper()
	var cleanups []func()
	defer func() {
		for _, f := range slices.Backward(cleanups) {
			f()
		}
	}()
	cleanup := func(f func()) { cleanups = append(cleanups, f) }
	_, last := benchObjects(services - 1)
	lastChain := ServiceChain(benchNamespace+"/"+last.Labels[discovery.LabelServiceName]+":http", "tcp")

	refNode := nodeNetNS(b, cleanup)
	syncs := &syncLog{records: make(chan syncRecord, 16)}
	ctx, stop := context.WithCancel(context.Background())
	start := time.Now()
	done := runReference(b, ctx, server.Config, refNode, backend, slog.New(syncs))
	first := syncs.next(b, 10*time.Minute)
	if !first.full || first.services < services {
		b.Fatalf("the reference's first sync was full=%t with %d services, want a full one with %d", first.full, first.services, services)
	}
	m.add("ref-startup-s", first.at.Sub(start).Seconds())
	m.add("ref-full-s", first.took.Seconds())
	for range partialSamples {
		time.Sleep(2 * DefaultMinSyncInterval) // clear of the sync rate limit
		syncs.drain()
		changed := time.Now()
		moveFirstEndpoint(b, client, moved)
		partial := syncs.next(b, 5*time.Minute)
		if partial.full || partial.rewritten != 1 {
			b.Fatalf("the reference's sync after one change was full=%t and rewrote %d services, want a partial one rewriting 1", partial.full, partial.rewritten)
		}
		m.add("ref-partial-ms", float64(partial.took)/float64(time.Millisecond))
		m.add("ref-update-ms", float64(partial.at.Sub(changed))/float64(time.Millisecond))
	}
	stop()
	if err := <-done; err != nil {
		b.Fatalf("reference Proxier: %v", err)
	}
	refRules := saveAll(b, refNode, backend)
	if _, ok := refRules["nat"][lastChain]; !ok {
		b.Fatalf("the reference's rules lack %s", lastChain)
	}

	kpNode := nodeNetNS(b, cleanup)
	start = time.Now()
	kp := startKubeProxy(b, binary, kpNode, backend, server.KubeconfigIn(b, kpNode.Path()), "--iptables-localhost-nodeports=false")
	cleanup(kp.stop)
	metrics := newMetricsClient(kpNode)
	synced := waitForMetrics(b, metrics, kp, 10*time.Minute, func(km kubeProxyMetrics) bool { return km.fullSyncs >= 1 })
	m.add("kp-startup-s", synced.lastSync.Sub(start).Seconds())
	m.add("kp-full-s", synced.fullSyncTime.Seconds())
	kpRules := saveAll(b, kpNode, backend)
	if _, ok := kpRules["nat"][lastChain]; !ok {
		b.Fatalf("kube-proxy's first sync lacks %s", lastChain)
	}
	diff := diffRulesets(kpRules, refRules)
	total := 0
	for _, tab := range kpRules {
		for _, rules := range tab {
			total += len(rules)
		}
	}
	m.add("rules", float64(total))
	m.add("rules-differing", float64(len(diff)))
	if len(diff) > 0 {
		b.Errorf("kube-proxy (-) and the reference (+) differ at %d services, %d lines, first ones:\n%s",
			services, len(diff), strings.Join(diff[:min(len(diff), 20)], "\n"))
	}
	for range partialSamples {
		time.Sleep(2 * DefaultMinSyncInterval)
		before := readMetrics(b, metrics)
		changed := time.Now()
		moveFirstEndpoint(b, client, moved)
		after := waitForMetrics(b, metrics, kp, 5*time.Minute, func(km kubeProxyMetrics) bool { return km.partialSyncs > before.partialSyncs })
		took := (after.partialSyncTime - before.partialSyncTime) / time.Duration(after.partialSyncs-before.partialSyncs)
		m.add("kp-partial-ms", float64(took)/float64(time.Millisecond))
		m.add("kp-update-ms", float64(after.lastSync.Sub(changed))/float64(time.Millisecond))
	}
}

// runReference starts the reference Proxier in netns with the lab's
// options on backend, with a client of its own speaking protobuf as
// kube-proxy's does, and returns the channel its Run result arrives on.
func runReference(b *testing.B, ctx context.Context, cfg *rest.Config, netns ns.NetNS, backend Backend, logger *slog.Logger) <-chan error {
	b.Helper()
	// As kube-proxy's --kube-api-content-type default: lists of thousands
	// of objects decode much faster than in JSON.
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	p, err := New(newClient(b, cfg), testNode, []netip.Addr{kubeProxyNodeIP}, Options{
		Backend: backend, ClusterCIDR: kubeProxyClusterCIDR, NetNSPath: netns.Path(), Logger: logger,
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return done
}

// saveAll reads and normalises every table of netns.
func saveAll(b *testing.B, netns ns.NetNS, backend Backend) ruleset {
	b.Helper()
	return normaliseSave(inNS(b, netns, "iptables-"+string(backend)+"-save"))
}

// syncRecord is one "synced" line of the reference's log.
type syncRecord struct {
	at                  time.Time
	full                bool
	services, rewritten int
	took                time.Duration
}

// syncLog is a slog.Handler that passes on the reference's "synced"
// records of syncs that changed something, and drops the rest.
type syncLog struct{ records chan syncRecord }

func (h *syncLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *syncLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *syncLog) WithGroup(string) slog.Handler            { return h }

func (h *syncLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "synced" {
		return nil
	}
	// Syncs that found nothing to do (events of other objects) are not
	// the ones measured.
	rec := syncRecord{at: r.Time}
	noop := false
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "full":
			rec.full = a.Value.Bool()
		case "services":
			rec.services = int(a.Value.Int64())
		case "rewritten":
			rec.rewritten = int(a.Value.Int64())
		case "took":
			rec.took = a.Value.Duration()
		case "unchanged":
			noop = a.Value.Bool()
		}
		return true
	})
	if noop {
		return nil
	}
	select {
	case h.records <- rec:
	default:
	}
	return nil
}

// drain forgets the syncs seen so far.
func (h *syncLog) drain() {
	for {
		select {
		case <-h.records:
		default:
			return
		}
	}
}

// next waits for the next sync.
func (h *syncLog) next(b *testing.B, timeout time.Duration) syncRecord {
	b.Helper()
	select {
	case rec := <-h.records:
		return rec
	case <-time.After(timeout):
		b.Fatalf("no sync of the reference within %v", timeout)
		return syncRecord{}
	}
}

// kubeProxyMetrics are the sync metrics kube-proxy serves.
type kubeProxyMetrics struct {
	lastSync                      time.Time
	fullSyncs, partialSyncs       int
	fullSyncTime, partialSyncTime time.Duration // summed over the syncs
}

// newMetricsClient returns an HTTP client that connects from inside netns.
func newMetricsClient(netns ns.NetNS) *http.Client {
	dial := func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		err = netns.Do(func(ns.NetNS) error {
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// scrapeMetrics reads kube-proxy's sync metrics.
func scrapeMetrics(client *http.Client) (kubeProxyMetrics, error) {
	var m kubeProxyMetrics
	resp, err := client.Get("http://" + kubeProxyMetricsAddr + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("metrics: %s", resp.Status)
	}
	seconds := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(nil, 1<<20)
	for scanner.Scan() {
		series, value, ok := strings.Cut(scanner.Text(), " ")
		name, labels, _ := strings.Cut(series, "{")
		if !ok || strings.HasPrefix(name, "#") || (labels != "" && labels != `ip_family="IPv4"}`) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "kubeproxy_sync_proxy_rules_last_timestamp_seconds":
			m.lastSync = time.Unix(0, int64(v*1e9))
		case "kubeproxy_sync_full_proxy_rules_duration_seconds_count":
			m.fullSyncs = int(v)
		case "kubeproxy_sync_full_proxy_rules_duration_seconds_sum":
			m.fullSyncTime = seconds(v)
		case "kubeproxy_sync_partial_proxy_rules_duration_seconds_count":
			m.partialSyncs = int(v)
		case "kubeproxy_sync_partial_proxy_rules_duration_seconds_sum":
			m.partialSyncTime = seconds(v)
		}
	}
	return m, scanner.Err()
}

func readMetrics(b *testing.B, client *http.Client) kubeProxyMetrics {
	b.Helper()
	m, err := scrapeMetrics(client)
	if err != nil {
		b.Fatalf("reading kube-proxy's metrics: %v", err)
	}
	return m
}

// waitForMetrics polls kube-proxy's metrics until done holds.
func waitForMetrics(b *testing.B, client *http.Client, kp *kubeProxy, timeout time.Duration, done func(kubeProxyMetrics) bool) kubeProxyMetrics {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, err := scrapeMetrics(client)
		if err == nil && done(m) {
			return m
		}
		if time.Now().After(deadline) {
			b.Fatalf("kube-proxy's metrics did not get there within %v (%v, %+v):\n%s", timeout, err, m, kp.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
