package dns

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey names one cached answer: the question, lower-cased, and the
// DNSSEC flags it was asked with (DNSSEC OK, checking disabled).
type cacheKey struct {
	name   string
	qtype  uint16
	qclass uint16
	do, cd bool
}

func keyFor(q dns.Question, do, cd bool) cacheKey {
	return cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass, do: do, cd: cd}
}

// cacheEntry is an upstream answer as it arrived and when it expires.
type cacheEntry struct {
	msg      *dns.Msg
	stored   time.Time
	expires  time.Time
	negative bool
}

// answerCache keeps upstream answers for as long as their TTLs allow,
// capped at maxTTL: a positive answer for its smallest record TTL, a
// negative one (NXDOMAIN, NODATA) for the SOA's negative TTL (RFC 2308).
// Answers without a TTL to respect (errors, truncated, negative without
// SOA) are not kept. When full, an arbitrary entry makes room.
type answerCache struct {
	maxTTL   time.Duration
	capacity int
	now      func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
}

func newAnswerCache(maxTTL time.Duration, capacity int) *answerCache {
	return &answerCache{maxTTL: maxTTL, capacity: capacity, now: time.Now, entries: make(map[cacheKey]*cacheEntry)}
}

// get returns a copy of the cached answer for key with its TTLs counted
// down by the time it has spent in the cache, and whether it is negative.
func (c *answerCache) get(key cacheKey) (msg *dns.Msg, negative, ok bool) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
	if ok && !now.Before(e.expires) {
		delete(c.entries, key)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil, false, false
	}
	msg = e.msg.Copy()
	aged := uint32(now.Sub(e.stored) / time.Second)
	for _, section := range [][]dns.RR{msg.Answer, msg.Ns, msg.Extra} {
		for _, rr := range section {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT {
				h.Ttl -= min(h.Ttl, aged)
			}
		}
	}
	return msg, e.negative, true
}

// put stores msg under key when its TTLs allow it.
func (c *answerCache) put(key cacheKey, msg *dns.Msg) {
	ttl, negative, ok := cacheTTL(msg)
	if !ok {
		return
	}
	lifetime := min(time.Duration(ttl)*time.Second, c.maxTTL)
	if lifetime <= 0 {
		return
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.entries[key]; !exists && len(c.entries) >= c.capacity {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = &cacheEntry{msg: msg, stored: now, expires: now.Add(lifetime), negative: negative}
}

// cacheTTL returns how long msg may be cached, in seconds, and whether it
// is a negative answer.
func cacheTTL(msg *dns.Msg) (ttl uint32, negative, ok bool) {
	if msg.Truncated {
		return 0, false, false
	}
	switch {
	case msg.Rcode == dns.RcodeSuccess && len(msg.Answer) > 0:
		ttl = msg.Answer[0].Header().Ttl
		for _, section := range [][]dns.RR{msg.Answer, msg.Ns, msg.Extra} {
			for _, rr := range section {
				if h := rr.Header(); h.Rrtype != dns.TypeOPT {
					ttl = min(ttl, h.Ttl)
				}
			}
		}
		return ttl, false, true
	case msg.Rcode == dns.RcodeSuccess || msg.Rcode == dns.RcodeNameError:
		for _, rr := range msg.Ns {
			if soa, isSOA := rr.(*dns.SOA); isSOA {
				return min(soa.Hdr.Ttl, soa.Minttl), true, true
			}
		}
	}
	return 0, false, false
}
