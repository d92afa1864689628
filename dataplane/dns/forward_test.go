package dns

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestForward(t *testing.T) {
	up := startUpstream(t)
	srv := startServer(t, Config{Upstreams: []string{up.addr}})
	for _, network := range []string{"udp", "tcp"} {
		resp := srv.query(t, network, "www.Example.org.", dns.TypeA)
		want := []string{"www.Example.org. 60 IN A 192.0.2.1"}
		if resp.Rcode != dns.RcodeSuccess || !slices.Equal(rrStrings(resp.Answer), want) {
			t.Errorf("over %s: %s %q, want NOERROR %q", network, dns.RcodeToString[resp.Rcode], rrStrings(resp.Answer), want)
		}
		if !resp.RecursionAvailable {
			t.Errorf("over %s: RA not set", network)
		}
	}
	// The second question came from the cache; a TCP question that misses
	// the cache is forwarded over TCP.
	if n := up.queries.Load(); n != 1 {
		t.Errorf("upstream got %d questions, want 1", n)
	}
	srv.query(t, "tcp", "other.example.org.", dns.TypeA)
	if n := up.tcpSeen.Load(); n != 1 {
		t.Errorf("upstream got %d TCP questions, want 1", n)
	}
}

// fakeClock is a settable time for the cache.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestCacheRespectsTTL(t *testing.T) {
	const soa = "example.org. 3600 IN SOA ns.example.org. admin.example.org. 1 7200 900 1209600 5"
	up := startUpstream(t)
	up.setAnswer(func(req *dns.Msg, _ bool) *dns.Msg {
		resp := new(dns.Msg).SetReply(req)
		switch name := req.Question[0].Name; name {
		case "short.example.org.":
			resp.Answer = []dns.RR{newRR(name + " 10 IN A 192.0.2.10")}
		case "long.example.org.":
			resp.Answer = []dns.RR{newRR(name + " 86400 IN A 192.0.2.11")}
		case "missing.example.org.":
			resp.Rcode = dns.RcodeNameError
			resp.Ns = []dns.RR{newRR(soa)}
		case "nosoa.example.org.":
			resp.Rcode = dns.RcodeNameError
		case "broken.example.org.":
			resp.Rcode = dns.RcodeServerFailure
		}
		return resp
	})
	h := newTestHandler(nil, up.addr)
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	h.cache.now = clock.Now

	askCounting := func(name string) (*dns.Msg, int64) {
		t.Helper()
		before := up.queries.Load()
		resp := ask(t, h, name, dns.TypeA)
		return resp, up.queries.Load() - before
	}
	steps := []struct {
		name      string
		advance   time.Duration
		forwarded int64
		ttl       uint32
		rcode     int
	}{
		{name: "short.example.org.", forwarded: 1, ttl: 10},
		{name: "short.example.org.", advance: 4 * time.Second, forwarded: 0, ttl: 6},
		{name: "short.example.org.", advance: 6 * time.Second, forwarded: 1, ttl: 10},
		// A long TTL is cached for at most CacheTTLMax (30 s).
		{name: "long.example.org.", forwarded: 1, ttl: 86400},
		{name: "long.example.org.", advance: 29 * time.Second, forwarded: 0, ttl: 86400 - 29},
		{name: "long.example.org.", advance: time.Second, forwarded: 1, ttl: 86400},
		// NXDOMAIN is kept for the SOA's negative TTL, min(3600, 5).
		{name: "missing.example.org.", forwarded: 1, rcode: dns.RcodeNameError},
		{name: "missing.example.org.", advance: 4 * time.Second, forwarded: 0, rcode: dns.RcodeNameError},
		{name: "missing.example.org.", advance: time.Second, forwarded: 1, rcode: dns.RcodeNameError},
		// Without a SOA a denial has no TTL, and errors are not cached.
		{name: "nosoa.example.org.", forwarded: 1, rcode: dns.RcodeNameError},
		{name: "nosoa.example.org.", forwarded: 1, rcode: dns.RcodeNameError},
		{name: "broken.example.org.", forwarded: 1, rcode: dns.RcodeServerFailure},
		{name: "broken.example.org.", forwarded: 1, rcode: dns.RcodeServerFailure},
	}
	for i, s := range steps {
		clock.advance(s.advance)
		resp, forwarded := askCounting(s.name)
		if forwarded != s.forwarded {
			t.Errorf("step %d (%s after %s): forwarded %d times, want %d", i, s.name, s.advance, forwarded, s.forwarded)
		}
		if resp.Rcode != s.rcode {
			t.Errorf("step %d (%s): rcode %s, want %s", i, s.name, dns.RcodeToString[resp.Rcode], dns.RcodeToString[s.rcode])
		}
		if s.rcode == dns.RcodeSuccess && (len(resp.Answer) != 1 || resp.Answer[0].Header().Ttl != s.ttl) {
			t.Errorf("step %d (%s): answer %q, want TTL %d", i, s.name, rrStrings(resp.Answer), s.ttl)
		}
	}
	if got := metricValue(t, h.metrics, "nettrace_dns_cache_hits_total", "kind", "success"); got != 2 {
		t.Errorf("cache hits (success) = %v, want 2", got)
	}
	if got := metricValue(t, h.metrics, "nettrace_dns_cache_hits_total", "kind", "denial"); got != 1 {
		t.Errorf("cache hits (denial) = %v, want 1", got)
	}
}

func TestCacheNoData(t *testing.T) {
	up := startUpstream(t)
	up.setAnswer(func(req *dns.Msg, _ bool) *dns.Msg {
		resp := new(dns.Msg).SetReply(req)
		resp.Ns = []dns.RR{newRR("example.org. 60 IN SOA ns.example.org. admin.example.org. 1 7200 900 1209600 20")}
		return resp
	})
	h := newTestHandler(nil, up.addr)
	for range 3 {
		resp := ask(t, h, "example.org.", dns.TypeAAAA)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 || len(resp.Ns) != 1 {
			t.Fatalf("NODATA answer: %v", resp)
		}
	}
	if n := up.queries.Load(); n != 1 {
		t.Errorf("upstream got %d questions, want 1 (NODATA cached)", n)
	}
}

// A UDP answer that the upstream truncates is asked again over TCP, and
// the client gets as much as its own buffer allows.
func TestForwardTruncated(t *testing.T) {
	up := startUpstream(t)
	up.setAnswer(func(req *dns.Msg, overTCP bool) *dns.Msg {
		resp := new(dns.Msg).SetReply(req)
		if !overTCP {
			resp.Truncated = true
			return resp
		}
		for i := range 100 {
			resp.Answer = append(resp.Answer, newRR(fmt.Sprintf("%s 60 IN A 198.51.100.%d", req.Question[0].Name, i)))
		}
		return resp
	})
	srv := startServer(t, Config{Upstreams: []string{up.addr}})

	big := new(dns.Msg).SetQuestion("many.example.org.", dns.TypeA)
	big.SetEdns0(dns.DefaultMsgSize, false)
	resp, _, err := (&dns.Client{Net: "udp"}).Exchange(big, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Truncated || len(resp.Answer) != 100 {
		t.Errorf("EDNS 4096 client: TC=%v with %d records, want all 100", resp.Truncated, len(resp.Answer))
	}
	if n := up.tcpSeen.Load(); n != 1 {
		t.Errorf("upstream got %d TCP questions, want 1", n)
	}

	// A plain 512-byte client gets TC and all of it over TCP.
	resp = srv.query(t, "udp", "many.example.org.", dns.TypeA)
	if !resp.Truncated || len(resp.Answer) >= 100 {
		t.Errorf("512-byte client: TC=%v with %d records, want truncated", resp.Truncated, len(resp.Answer))
	}
	if resp := srv.query(t, "tcp", "many.example.org.", dns.TypeA); len(resp.Answer) != 100 {
		t.Errorf("TCP client: %d records, want 100", len(resp.Answer))
	}
}

// With every upstream down the answer is SERVFAIL within 2 s, whether the
// upstreams refuse (closed port) or stay silent.
func TestAllUpstreamsDown(t *testing.T) {
	closed := startUpstream(t)
	closed.stop()
	silent, _ := silentUpstream(t)
	srv := startServer(t, Config{Upstreams: []string{closed.addr, silent}})
	for i := range 3 {
		start := time.Now()
		resp := srv.query(t, "udp", fmt.Sprintf("q%d.example.org.", i), dns.TypeA)
		if took := time.Since(start); took >= 2*time.Second {
			t.Errorf("question %d took %s, want under 2s", i, took)
		}
		if resp.Rcode != dns.RcodeServerFailure {
			t.Errorf("question %d: rcode %s, want SERVFAIL", i, dns.RcodeToString[resp.Rcode])
		}
	}
	// The health checks take both out of rotation: then SERVFAIL comes at once.
	waitFor(t, "both upstreams to be marked down", func() bool {
		return metricValue(t, srv.handler.metrics, "nettrace_dns_upstream_healthy", "upstream", closed.addr) == 0 &&
			metricValue(t, srv.handler.metrics, "nettrace_dns_upstream_healthy", "upstream", silent) == 0
	})
	if _, err := srv.handler.forwarder.exchange(t.Context(), new(dns.Msg).SetQuestion("x.", dns.TypeA), false); err != errNoUpstream {
		t.Errorf("exchange with all upstreams down: %v, want %v", err, errNoUpstream)
	}
}

// A silent upstream is skipped once its health checks fail, and used again
// when it answers.
func TestFailingUpstreamIsSkipped(t *testing.T) {
	good := startUpstream(t)
	bad := startUpstream(t)
	bad.setAnswer(func(*dns.Msg, bool) *dns.Msg { return nil }) // silent
	srv := startServer(t, Config{Upstreams: []string{bad.addr, good.addr}, HealthCheckInterval: 100 * time.Millisecond})

	waitFor(t, "the silent upstream to be marked down", func() bool {
		return metricValue(t, srv.handler.metrics, "nettrace_dns_upstream_healthy", "upstream", bad.addr) == 0
	})
	for i := range 6 {
		resp := srv.query(t, "udp", fmt.Sprintf("q%d.example.org.", i), dns.TypeA)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			t.Fatalf("question %d: %s with %d records, want the good upstream's answer", i, dns.RcodeToString[resp.Rcode], len(resp.Answer))
		}
	}
	// Only health checks reach the skipped upstream.
	if n := bad.queries.Load(); n != 0 {
		t.Errorf("skipped upstream got %d questions, want 0", n)
	}
	if n := good.queries.Load(); n != 6 {
		t.Errorf("good upstream got %d questions, want 6", n)
	}

	bad.setAnswer(func(req *dns.Msg, _ bool) *dns.Msg { return new(dns.Msg).SetReply(req) })
	waitFor(t, "the upstream to come back", func() bool {
		return metricValue(t, srv.handler.metrics, "nettrace_dns_upstream_healthy", "upstream", bad.addr) == 1
	})
	if !strings.Contains(srv.logs.String(), "upstream is back") {
		t.Errorf("no log line for the upstream coming back:\n%s", srv.logs)
	}
}

// Beyond MaxConcurrent forwarded questions in flight, more are REFUSED.
func TestMaxConcurrent(t *testing.T) {
	up := startUpstream(t)
	release := make(chan struct{})
	arrived := make(chan string, 10)
	up.setAnswer(func(req *dns.Msg, _ bool) *dns.Msg {
		if req.Question[0].Name == "." { // health check
			return new(dns.Msg).SetReply(req)
		}
		arrived <- req.Question[0].Name
		<-release
		resp := new(dns.Msg).SetReply(req)
		resp.Answer = []dns.RR{newRR(req.Question[0].Name + " 60 IN A 192.0.2.1")}
		return resp
	})
	srv := startServer(t, Config{Upstreams: []string{up.addr}, MaxConcurrent: 2, ForwardTimeout: 10 * time.Second})

	var wg sync.WaitGroup
	held := make([]*dns.Msg, 2)
	for i := range held {
		wg.Go(func() {
			held[i] = exchangeQuiet(srv.Addr(), fmt.Sprintf("held%d.example.org.", i))
		})
	}
	<-arrived
	<-arrived
	resp := srv.query(t, "udp", "third.example.org.", dns.TypeA)
	if resp.Rcode != dns.RcodeRefused {
		t.Errorf("third question in flight: rcode %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}
	close(release)
	wg.Wait()
	for i, m := range held {
		if m == nil || m.Rcode != dns.RcodeSuccess {
			t.Errorf("held question %d: %v, want NOERROR", i, m)
		}
	}
	if got := metricValue(t, srv.handler.metrics, "nettrace_dns_forward_max_concurrent_rejects_total", "", ""); got != 1 {
		t.Errorf("rejects = %v, want 1", got)
	}
	// Below the limit again, questions are forwarded.
	if resp := srv.query(t, "udp", "fourth.example.org.", dns.TypeA); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("after release: rcode %s, want NOERROR", dns.RcodeToString[resp.Rcode])
	}
}

// exchangeQuiet asks name over UDP from a goroutine, nil on error.
func exchangeQuiet(addr, name string) *dns.Msg {
	resp, _, err := (&dns.Client{Net: "udp", Timeout: 15 * time.Second}).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), addr)
	if err != nil {
		return nil
	}
	return resp
}

func TestUpstreamAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":          "192.0.2.1:53",
		"192.0.2.1:5353":     "192.0.2.1:5353",
		"2001:db8::1":        "[2001:db8::1]:53",
		"[2001:db8::1]:5353": "[2001:db8::1]:5353",
	} {
		if got, err := upstreamAddr(in); err != nil || got != want {
			t.Errorf("upstreamAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := upstreamAddr("dns.example.org"); err == nil {
		t.Error("upstreamAddr accepted a host name")
	}
	if _, err := NewServer(Config{Listen: "127.0.0.1:0"}, nil); err == nil {
		t.Error("NewServer accepted no upstreams")
	}
}
