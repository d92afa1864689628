package dns

import (
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkServeA measures the handling of an A question for a ClusterIP
// Service, from the parsed request to the packed answer, and, for
// comparison, of a forwarded question answered from the cache.
func BenchmarkServeA(b *testing.B) {
	up := startUpstream(b)
	h := testHandler(b, up.addr, labCluster()...)
	for _, bench := range []struct{ name, qname string }{
		{"service", "frontend.web.svc.cluster.local."},
		{"headless", "db.web.svc.cluster.local."},
		{"cached", "www.example.org."},
	} {
		b.Run(bench.name, func(b *testing.B) {
			req := new(dns.Msg).SetQuestion(bench.qname, dns.TypeA)
			w := &recorder{remote: udpClient()}
			h.ServeDNS(w, req) // fills the cache
			b.ReportAllocs()
			for b.Loop() {
				h.ServeDNS(w, req)
			}
			if w.msg == nil || w.msg.Rcode != dns.RcodeSuccess || len(w.msg.Answer) == 0 {
				b.Fatalf("answer: %v", w.msg)
			}
		})
	}
}
