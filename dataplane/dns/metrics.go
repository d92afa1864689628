package dns

import (
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the server's Prometheus metrics, on a registry of its own.
type metrics struct {
	registry        *prometheus.Registry
	requests        *prometheus.CounterVec
	cacheHits       *prometheus.CounterVec
	cacheMisses     prometheus.Counter
	forwardDuration *prometheus.HistogramVec
	upstreamHealthy *prometheus.GaugeVec
	rejects         prometheus.Counter
}

func newMetrics() *metrics {
	const ns = "nettrace_dns"
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "requests_total",
			Help: "DNS requests answered, by query type and response code.",
		}, []string{"type", "rcode"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "cache_hits_total",
			Help: "Forwarded questions answered from the cache, by kind (success or denial).",
		}, []string{"kind"}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "cache_misses_total",
			Help: "Forwarded questions not found in the cache.",
		}),
		forwardDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "forward_duration_seconds",
			Help:    "Time of exchanges with an upstream, by upstream and response code (\"error\" when none came).",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 14),
		}, []string{"upstream", "rcode"}),
		upstreamHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "upstream_healthy",
			Help: "1 while the upstream answers health checks, 0 while it is skipped.",
		}, []string{"upstream"}),
		rejects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "forward_max_concurrent_rejects_total",
			Help: "Questions refused because the forwarder was at its concurrency limit.",
		}),
	}
	m.registry.MustRegister(m.requests, m.cacheHits, m.cacheMisses, m.forwardDuration, m.upstreamHealthy, m.rejects,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeRequest counts one answered request.
func (m *metrics) observeRequest(qtype uint16, rcode int) {
	m.requests.WithLabelValues(typeLabel(qtype), rcodeLabel(rcode)).Inc()
}

// typeLabel names common query types and folds the rest into "other", so
// that random types in queries cannot grow the label set without bound.
func typeLabel(qtype uint16) string {
	switch qtype {
	case dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypePTR, dns.TypeSRV, dns.TypeTXT, dns.TypeSOA,
		dns.TypeNS, dns.TypeMX, dns.TypeHTTPS, dns.TypeSVCB, dns.TypeANY, dns.TypeAXFR, dns.TypeIXFR:
		return dns.TypeToString[qtype]
	}
	return "other"
}

// rcodeLabel names a response code, folding unknown ones into "other".
func rcodeLabel(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "other"
}
