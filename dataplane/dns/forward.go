package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Errors of the forwarder that decide the response code.
var (
	// errMaxConcurrent means the question was not sent: answer REFUSED.
	errMaxConcurrent = errors.New("forwarder at its concurrency limit")
	// errNoUpstream means every upstream fails its health checks: answer SERVFAIL.
	errNoUpstream = errors.New("no healthy upstream")
)

// upstreamFailsToDown is how many failed health checks in a row take an
// upstream out of rotation; one good answer puts it back.
const upstreamFailsToDown = 2

// upstream is one server that questions outside the cluster zone go to.
type upstream struct {
	addr    string
	healthy atomic.Bool
	fails   atomic.Int32
	// check asks the health checker for a check now, after a failed exchange.
	check chan struct{}
}

// forwarder sends a question to the healthy upstreams one after the other,
// starting with the next in turn, until one answers. It asks over the
// client's transport and repeats a truncated UDP answer over TCP. The whole
// exchange, every upstream tried, ends within timeout; at most
// maxConcurrent exchanges run at once.
type forwarder struct {
	upstreams     []*upstream
	timeout       time.Duration
	checkInterval time.Duration
	maxConcurrent int64
	inflight      atomic.Int64
	next          atomic.Uint32
	udp, tcp      *dns.Client
	metrics       *metrics
	log           *slog.Logger
}

func newForwarder(addrs []string, timeout, checkInterval time.Duration, maxConcurrent int, m *metrics, log *slog.Logger) *forwarder {
	f := &forwarder{
		timeout:       timeout,
		checkInterval: checkInterval,
		maxConcurrent: int64(maxConcurrent),
		udp:           &dns.Client{Net: "udp", Timeout: timeout},
		tcp:           &dns.Client{Net: "tcp", Timeout: timeout},
		metrics:       m,
		log:           log,
	}
	for _, addr := range addrs {
		u := &upstream{addr: addr, check: make(chan struct{}, 1)}
		u.healthy.Store(true)
		m.upstreamHealthy.WithLabelValues(addr).Set(1)
		f.upstreams = append(f.upstreams, u)
	}
	return f
}

// exchange sends query to an upstream and returns its answer.
func (f *forwarder) exchange(ctx context.Context, query *dns.Msg, overTCP bool) (*dns.Msg, error) {
	if f.inflight.Add(1) > f.maxConcurrent {
		f.inflight.Add(-1)
		f.metrics.rejects.Inc()
		return nil, errMaxConcurrent
	}
	defer f.inflight.Add(-1)

	deadline := time.Now().Add(f.timeout)
	var healthy []*upstream
	first := int(f.next.Add(1))
	for i := range f.upstreams {
		if u := f.upstreams[(first+i)%len(f.upstreams)]; u.healthy.Load() {
			healthy = append(healthy, u)
		}
	}
	err := errNoUpstream
	for i, u := range healthy {
		// Each upstream left gets an equal share of the time left, so
		// that a silent one cannot use up the time of the next.
		share := time.Until(deadline) / time.Duration(len(healthy)-i)
		if share <= 0 {
			break
		}
		attemptCtx, cancel := context.WithTimeout(ctx, share)
		var resp *dns.Msg
		resp, err = f.exchangeWith(attemptCtx, u, query, overTCP)
		cancel()
		if err == nil {
			return resp, nil
		}
		select {
		case u.check <- struct{}{}:
		default:
		}
	}
	return nil, err
}

// exchangeWith sends query to u, over TCP again when the UDP answer was
// truncated, and checks that the answer is for the question asked.
func (f *forwarder) exchangeWith(ctx context.Context, u *upstream, query *dns.Msg, overTCP bool) (*dns.Msg, error) {
	client := f.udp
	if overTCP {
		client = f.tcp
	}
	start := time.Now()
	resp, _, err := client.ExchangeContext(ctx, query, u.addr)
	if err == nil && resp.Truncated && !overTCP {
		resp, _, err = f.tcp.ExchangeContext(ctx, query, u.addr)
	}
	if err == nil && !sameQuestion(query, resp) {
		err = fmt.Errorf("answer from %s is for another question", u.addr)
	}
	rcode := "error"
	if err == nil {
		rcode = rcodeLabel(resp.Rcode)
	}
	f.metrics.forwardDuration.WithLabelValues(u.addr, rcode).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, fmt.Errorf("forwarding %s to %s: %w", query.Question[0].Name, u.addr, err)
	}
	return resp, nil
}

func sameQuestion(query, resp *dns.Msg) bool {
	if len(resp.Question) != 1 {
		return false
	}
	q, r := query.Question[0], resp.Question[0]
	return q.Qtype == r.Qtype && q.Qclass == r.Qclass && strings.EqualFold(q.Name, r.Name)
}

// healthCheck starts checking every upstream each checkInterval, and at
// once after an exchange with it failed, until ctx is done.
func (f *forwarder) healthCheck(ctx context.Context) {
	for _, u := range f.upstreams {
		go f.watch(ctx, u)
	}
}

// watch checks u until ctx is done.
func (f *forwarder) watch(ctx context.Context, u *upstream) {
	tick := time.NewTicker(f.checkInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-u.check:
		}
		f.checkOnce(ctx, u)
	}
}

// checkOnce asks u for the root NS records without recursion. Any answer,
// whatever its code, shows the upstream is up; only silence or a network
// error counts as a failure.
func (f *forwarder) checkOnce(ctx context.Context, u *upstream) {
	probe := new(dns.Msg)
	probe.SetQuestion(".", dns.TypeNS)
	probe.RecursionDesired = false
	checkCtx, cancel := context.WithTimeout(ctx, min(f.checkInterval, f.timeout))
	defer cancel()
	_, _, err := f.udp.ExchangeContext(checkCtx, probe, u.addr)
	if ctx.Err() != nil {
		return // shutting down
	}
	if err == nil {
		u.fails.Store(0)
		if !u.healthy.Swap(true) {
			f.log.Info("upstream is back", "upstream", u.addr)
			f.metrics.upstreamHealthy.WithLabelValues(u.addr).Set(1)
		}
		return
	}
	if u.fails.Add(1) >= upstreamFailsToDown && u.healthy.Swap(false) {
		f.log.Warn("upstream fails health checks, skipping it", "upstream", u.addr, "error", err)
		f.metrics.upstreamHealthy.WithLabelValues(u.addr).Set(0)
	}
}
