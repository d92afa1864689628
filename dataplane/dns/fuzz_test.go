package dns

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzServeDNS passes arbitrary wire bytes, as a client could send them, to
// the handler: whatever parses as a message must get an answer that packs,
// with the request's ID, over UDP within the client's size.
func FuzzServeDNS(f *testing.F) {
	seed := func(build func(m *dns.Msg)) {
		m := new(dns.Msg)
		build(m)
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	seed(func(m *dns.Msg) { m.SetQuestion("frontend.web.svc.cluster.local.", dns.TypeA) })
	seed(func(m *dns.Msg) {
		m.SetQuestion("_pg._tcp.db.web.svc.cluster.local.", dns.TypeSRV)
		m.SetEdns0(512, true)
	})
	seed(func(m *dns.Msg) { m.SetQuestion("ext.web.svc.cluster.local.", dns.TypeA) })
	seed(func(m *dns.Msg) { m.SetQuestion("alias.web.svc.cluster.local.", dns.TypeANY) })
	seed(func(m *dns.Msg) { m.SetQuestion("20.0.96.10.in-addr.arpa.", dns.TypePTR) })
	seed(func(m *dns.Msg) { m.SetQuestion("fd00--1.web.pod.cluster.local.", dns.TypeAAAA) })
	seed(func(m *dns.Msg) { m.SetQuestion("example.org.", dns.TypeA) })
	seed(func(m *dns.Msg) { m.SetQuestion("cluster.local.", dns.TypeAXFR) })
	seed(func(m *dns.Msg) { m.SetNotify("cluster.local.") })
	seed(func(m *dns.Msg) {
		m.SetQuestion("frontend.web.svc.cluster.local.", dns.TypeA)
		m.Question = append(m.Question, m.Question[0])
	})
	seed(func(m *dns.Msg) {
		m.SetQuestion("db.web.svc.cluster.local.", dns.TypeA)
		m.SetEdns0(4096, false)
		m.IsEdns0().SetVersion(1)
	})
	seed(func(m *dns.Msg) { m.Id = 7 })
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1})

	up := startUpstream(f)
	h := testHandler(f, up.addr, labCluster()...)
	h.forwarder.timeout = 100 * time.Millisecond
	f.Fuzz(func(t *testing.T, wire []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(wire); err != nil {
			return // the DNS server answers FORMERR itself before any handler
		}
		for _, remote := range []net.Addr{udpClient(), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}} {
			w := &recorder{remote: remote}
			h.ServeDNS(w, req)
			if w.msg == nil {
				t.Fatalf("no answer (or one that does not pack) to %v", req)
			}
			if w.msg.Id != req.Id || !w.msg.Response {
				t.Fatalf("answer %v is not a response to %v", w.msg, req)
			}
			if _, udp := remote.(*net.UDPAddr); udp {
				limit := dns.MinMsgSize
				if opt := req.IsEdns0(); opt != nil {
					limit = max(limit, int(opt.UDPSize()))
				}
				if len(w.wire) > limit {
					t.Fatalf("UDP answer of %d bytes for a client that takes %d", len(w.wire), limit)
				}
			}
		}
	})
}
