package dns

import (
	"context"
	"errors"
	"log/slog"
	"net"

	"github.com/miekg/dns"
)

const (
	// ednsSize is the UDP payload size the server advertises to clients
	// and asks upstreams for (the DNS flag day 2020 value).
	ednsSize = 1232
	// maxChase bounds how many ExternalName CNAMEs one answer follows.
	maxChase = 8
)

// handler answers DNS requests: names in the cluster zone and PTRs of
// cluster addresses from the Cluster, everything else from the cache or
// else the upstreams.
type handler struct {
	zone      *zone
	cache     *answerCache
	forwarder *forwarder
	metrics   *metrics
	log       *slog.Logger
}

// ServeDNS answers one request, truncated to what the client can take.
func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	_, overTCP := w.RemoteAddr().(*net.TCPAddr)
	resp := h.respond(req, overTCP)
	size := dns.MaxMsgSize
	if !overTCP {
		size = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
	}
	resp.Truncate(size)
	if err := w.WriteMsg(resp); err != nil {
		h.log.Debug("writing answer", "client", w.RemoteAddr(), "error", err)
	}
	var qtype uint16
	if len(req.Question) > 0 {
		qtype = req.Question[0].Qtype
	}
	h.metrics.observeRequest(qtype, resp.Rcode)
}

// respond builds the answer to req.
func (h *handler) respond(req *dns.Msg, overTCP bool) *dns.Msg {
	resp := new(dns.Msg)
	opt := req.IsEdns0()
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		return resp.SetRcode(req, dns.RcodeFormatError)
	case opt != nil && opt.Version() != 0:
		resp.SetRcode(req, dns.RcodeBadVers)
		resp.SetEdns0(ednsSize, false)
		return resp
	}
	q := req.Question[0]
	switch {
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		resp.SetRcode(req, dns.RcodeRefused)
	case q.Qclass == dns.ClassINET && h.zone.contains(q.Name):
		if !h.zone.cluster.HasSynced() {
			resp.SetRcode(req, dns.RcodeServerFailure)
			break
		}
		h.fromZone(resp, req, h.zone.lookup(q.Name, q.Qtype), overTCP)
	default:
		if q.Qclass == dns.ClassINET {
			if a, ok := h.zone.reverse(q.Name, q.Qtype); ok {
				h.fromZone(resp, req, a, overTCP)
				break
			}
		}
		h.fromUpstream(resp, req, overTCP)
	}
	resp.RecursionAvailable = true
	if opt != nil {
		resp.SetEdns0(ednsSize, opt.Do())
	}
	return resp
}

// fromZone fills resp with an answer of the zone, following an
// ExternalName CNAME to the target's records.
func (h *handler) fromZone(resp, req *dns.Msg, a answer, overTCP bool) {
	resp.SetRcode(req, a.rcode)
	resp.Authoritative = true
	resp.Answer, resp.Extra = a.answer, a.extra
	qtype := req.Question[0].Qtype
	for range maxChase {
		if a.cname == "" {
			break
		}
		if h.zone.contains(a.cname) {
			a = h.zone.lookup(a.cname, qtype)
			resp.Rcode = a.rcode
			resp.Answer = append(resp.Answer, a.answer...)
			continue
		}
		target := dns.Question{Name: a.cname, Qtype: qtype, Qclass: dns.ClassINET}
		msg, err := h.resolve(target, req, overTCP)
		if err != nil {
			// The CNAME alone still lets the client resolve the target.
			break
		}
		if msg.Rcode == dns.RcodeNameError || msg.Rcode == dns.RcodeSuccess {
			resp.Rcode = msg.Rcode
			resp.Answer = append(resp.Answer, msg.Answer...)
			resp.Ns = msg.Ns
		}
		return
	}
	if len(resp.Answer) == 0 {
		resp.Ns = []dns.RR{h.zone.soa()}
	}
}

// fromUpstream fills resp with the upstreams' answer to req: REFUSED when
// the forwarder is at its concurrency limit, SERVFAIL when no upstream
// answered.
func (h *handler) fromUpstream(resp, req *dns.Msg, overTCP bool) {
	msg, err := h.resolve(req.Question[0], req, overTCP)
	switch {
	case errors.Is(err, errMaxConcurrent):
		resp.SetRcode(req, dns.RcodeRefused)
		return
	case err != nil:
		h.log.Debug("no upstream answer", "question", req.Question[0].String(), "error", err)
		resp.SetRcode(req, dns.RcodeServerFailure)
		return
	}
	resp.SetRcode(req, msg.Rcode)
	resp.Authoritative = msg.Authoritative
	resp.AuthenticatedData = msg.AuthenticatedData
	resp.Answer, resp.Ns = msg.Answer, msg.Ns
	for _, rr := range msg.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			resp.Extra = append(resp.Extra, rr)
		}
	}
}

// resolve returns the upstreams' answer to q, asked with the flags of req,
// from the cache when it has one. The answer is the caller's to change.
func (h *handler) resolve(q dns.Question, req *dns.Msg, overTCP bool) (*dns.Msg, error) {
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	key := keyFor(q, do, req.CheckingDisabled)
	if msg, negative, ok := h.cache.get(key); ok {
		kind := "success"
		if negative {
			kind = "denial"
		}
		h.metrics.cacheHits.WithLabelValues(kind).Inc()
		return msg, nil
	}
	h.metrics.cacheMisses.Inc()

	query := new(dns.Msg)
	query.SetQuestion(q.Name, q.Qtype)
	query.Question[0].Qclass = q.Qclass
	query.RecursionDesired = req.RecursionDesired
	query.CheckingDisabled = req.CheckingDisabled
	query.SetEdns0(ednsSize, do)
	msg, err := h.forwarder.exchange(context.Background(), query, overTCP)
	if err != nil {
		return nil, err
	}
	h.cache.put(key, msg)
	return msg.Copy(), nil
}
