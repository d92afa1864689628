package dns

import (
	"slices"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// labCluster is the cluster the zone tests answer from.
func labCluster() []runtime.Object {
	v6only := service("web", "v6only", []string{"fd00::20"}, port("http", corev1.ProtocolTCP, 80))
	noIP := service("web", "noip", nil, port("http", corev1.ProtocolTCP, 80))
	db := service("web", "db", []string{corev1.ClusterIPNone}, port("pg", corev1.ProtocolTCP, 5432))
	empty := service("web", "empty", []string{corev1.ClusterIPNone}, port("pg", corev1.ProtocolTCP, 5432))
	pg := []discoveryv1.EndpointPort{slicePort("pg", corev1.ProtocolTCP, 15432)}
	return []runtime.Object{
		namespace("default"), namespace("web"),
		service("web", "frontend", []string{"10.96.0.20"},
			port("http", corev1.ProtocolTCP, 80), port("dns", corev1.ProtocolUDP, 53), port("", corev1.ProtocolTCP, 8080)),
		service("web", "dual", []string{"10.96.0.30", "fd00::30"}, port("http", corev1.ProtocolTCP, 80)),
		v6only, noIP, db, empty,
		slice("web", "db", "db-a", discoveryv1.AddressTypeIPv4, pg,
			ep("172.16.1.10", "db-0", true),
			ep("172.16.2.11", "", true),
			ep("172.16.2.12", "db-2", false)),
		// The same endpoint again in a second slice, and an IPv6 slice: both ignored.
		slice("web", "db", "db-b", discoveryv1.AddressTypeIPv4, pg, ep("172.16.1.10", "db-0", true)),
		slice("web", "db", "db-v6", discoveryv1.AddressTypeIPv6, pg, ep("fd00::1:10", "db-0", true)),
		externalNameService("web", "ext", "Example.ORG"),
		externalNameService("web", "alias", "frontend.web.svc.cluster.local"),
		externalNameService("web", "byip", "192.0.2.7"),
	}
}

func TestZone(t *testing.T) {
	up := startUpstream(t)
	h := testHandler(t, up.addr, labCluster()...)
	const soa = "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30"
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		extra  []string
	}{{
		name: "ClusterIP A", qname: "frontend.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{"frontend.web.svc.cluster.local. 30 IN A 10.96.0.20"},
	}, {
		name: "names are case-insensitive, owner as asked", qname: "FrontEnd.WEB.svc.Cluster.Local.", qtype: dns.TypeA,
		answer: []string{"FrontEnd.WEB.svc.Cluster.Local. 30 IN A 10.96.0.20"},
	}, {
		name: "ClusterIP AAAA is NODATA", qname: "frontend.web.svc.cluster.local.", qtype: dns.TypeAAAA,
	}, {
		name: "ClusterIP TXT is NODATA", qname: "frontend.web.svc.cluster.local.", qtype: dns.TypeTXT,
	}, {
		name: "dual-stack service answers its IPv4", qname: "dual.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{"dual.web.svc.cluster.local. 30 IN A 10.96.0.30"},
	}, {
		name: "IPv6-only service: A is NODATA", qname: "v6only.web.svc.cluster.local.", qtype: dns.TypeA,
	}, {
		name: "IPv6-only service: AAAA is NODATA", qname: "v6only.web.svc.cluster.local.", qtype: dns.TypeAAAA,
	}, {
		name: "service without cluster IP has no name", qname: "noip.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "unknown service", qname: "nope.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "service in unknown namespace", qname: "frontend.nope.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "namespace node exists", qname: "web.svc.cluster.local.", qtype: dns.TypeA,
	}, {
		name: "unknown namespace node", qname: "nope.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "svc node exists", qname: "svc.cluster.local.", qtype: dns.TypeA,
	}, {
		name: "unknown name in zone", qname: "www.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "too deep under a service", qname: "a.b.c.frontend.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "SRV of a named port", qname: "_http._tcp.frontend.web.svc.cluster.local.", qtype: dns.TypeSRV,
		answer: []string{"_http._tcp.frontend.web.svc.cluster.local. 30 IN SRV 0 100 80 frontend.web.svc.cluster.local."},
		extra:  []string{"frontend.web.svc.cluster.local. 30 IN A 10.96.0.20"},
	}, {
		name: "SRV of a UDP port", qname: "_dns._udp.frontend.web.svc.cluster.local.", qtype: dns.TypeSRV,
		answer: []string{"_dns._udp.frontend.web.svc.cluster.local. 30 IN SRV 0 100 53 frontend.web.svc.cluster.local."},
		extra:  []string{"frontend.web.svc.cluster.local. 30 IN A 10.96.0.20"},
	}, {
		name: "SRV with the wrong protocol", qname: "_http._udp.frontend.web.svc.cluster.local.", qtype: dns.TypeSRV,
		rcode: dns.RcodeNameError,
	}, {
		name: "SRV of an unknown port", qname: "_https._tcp.frontend.web.svc.cluster.local.", qtype: dns.TypeSRV,
		rcode: dns.RcodeNameError,
	}, {
		name: "A at an SRV name is NODATA", qname: "_http._tcp.frontend.web.svc.cluster.local.", qtype: dns.TypeA,
	}, {
		name: "protocol node exists", qname: "_tcp.frontend.web.svc.cluster.local.", qtype: dns.TypeSRV,
	}, {
		name: "protocol node without ports", qname: "_sctp.frontend.web.svc.cluster.local.", qtype: dns.TypeSRV,
		rcode: dns.RcodeNameError,
	}, {
		name: "headless A: one per ready endpoint", qname: "db.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{
			"db.web.svc.cluster.local. 30 IN A 172.16.1.10",
			"db.web.svc.cluster.local. 30 IN A 172.16.2.11",
		},
	}, {
		name: "headless AAAA is NODATA", qname: "db.web.svc.cluster.local.", qtype: dns.TypeAAAA,
	}, {
		name: "headless without ready endpoints", qname: "empty.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "endpoint hostname", qname: "db-0.db.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{"db-0.db.web.svc.cluster.local. 30 IN A 172.16.1.10"},
	}, {
		name: "endpoint without hostname has its dashed address", qname: "172-16-2-11.db.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{"172-16-2-11.db.web.svc.cluster.local. 30 IN A 172.16.2.11"},
	}, {
		name: "not-ready endpoint has no name", qname: "db-2.db.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "endpoint hostname AAAA is NODATA", qname: "db-0.db.web.svc.cluster.local.", qtype: dns.TypeAAAA,
	}, {
		name: "ClusterIP service has no endpoint names", qname: "x.frontend.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "headless SRV: one per ready endpoint, endpoint port", qname: "_pg._tcp.db.web.svc.cluster.local.", qtype: dns.TypeSRV,
		answer: []string{
			"_pg._tcp.db.web.svc.cluster.local. 30 IN SRV 0 50 15432 db-0.db.web.svc.cluster.local.",
			"_pg._tcp.db.web.svc.cluster.local. 30 IN SRV 0 50 15432 172-16-2-11.db.web.svc.cluster.local.",
		},
		extra: []string{
			"db-0.db.web.svc.cluster.local. 30 IN A 172.16.1.10",
			"172-16-2-11.db.web.svc.cluster.local. 30 IN A 172.16.2.11",
		},
	}, {
		name: "ExternalName CNAME", qname: "ext.web.svc.cluster.local.", qtype: dns.TypeCNAME,
		answer: []string{"ext.web.svc.cluster.local. 30 IN CNAME example.org."},
	}, {
		name: "ExternalName A follows the CNAME upstream", qname: "ext.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{
			"ext.web.svc.cluster.local. 30 IN CNAME example.org.",
			"example.org. 60 IN A 192.0.2.1",
		},
	}, {
		name: "ExternalName into the zone", qname: "alias.web.svc.cluster.local.", qtype: dns.TypeA,
		answer: []string{
			"alias.web.svc.cluster.local. 30 IN CNAME frontend.web.svc.cluster.local.",
			"frontend.web.svc.cluster.local. 30 IN A 10.96.0.20",
		},
	}, {
		name: "ExternalName that is an IP has no record", qname: "byip.web.svc.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "PTR of a ClusterIP", qname: "20.0.96.10.in-addr.arpa.", qtype: dns.TypePTR,
		answer: []string{"20.0.96.10.in-addr.arpa. 30 IN PTR frontend.web.svc.cluster.local."},
	}, {
		name: "PTR of a headless endpoint hostname", qname: "10.1.16.172.in-addr.arpa.", qtype: dns.TypePTR,
		answer: []string{"10.1.16.172.in-addr.arpa. 30 IN PTR db-0.db.web.svc.cluster.local."},
	}, {
		name: "PTR of a headless endpoint without hostname", qname: "11.2.16.172.in-addr.arpa.", qtype: dns.TypePTR,
		answer: []string{"11.2.16.172.in-addr.arpa. 30 IN PTR 172-16-2-11.db.web.svc.cluster.local."},
	}, {
		name: "pod A", qname: "172-16-1-99.web.pod.cluster.local.", qtype: dns.TypeA,
		answer: []string{"172-16-1-99.web.pod.cluster.local. 30 IN A 172.16.1.99"},
	}, {
		name: "pod AAAA of an IPv4 pod is NODATA", qname: "172-16-1-99.web.pod.cluster.local.", qtype: dns.TypeAAAA,
	}, {
		name: "pod with an IPv6 name", qname: "fd00--1.web.pod.cluster.local.", qtype: dns.TypeAAAA,
		answer: []string{"fd00--1.web.pod.cluster.local. 30 IN AAAA fd00::1"},
	}, {
		name: "pod name that is no address", qname: "300-1-1-1.web.pod.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "pod in unknown namespace", qname: "172-16-1-99.nope.pod.cluster.local.", qtype: dns.TypeA,
		rcode: dns.RcodeNameError,
	}, {
		name: "pod namespace node", qname: "web.pod.cluster.local.", qtype: dns.TypeA,
	}, {
		name: "schema version", qname: "dns-version.cluster.local.", qtype: dns.TypeTXT,
		answer: []string{`dns-version.cluster.local. 30 IN TXT "1.1.0"`},
	}, {
		name: "zone SOA", qname: "cluster.local.", qtype: dns.TypeSOA,
		answer: []string{soa},
	}, {
		name: "zone apex A is NODATA", qname: "cluster.local.", qtype: dns.TypeA,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := ask(t, h, tt.qname, tt.qtype)
			if resp.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
			}
			if !resp.Authoritative {
				t.Error("answer from the zone is not authoritative")
			}
			if got := rrStrings(resp.Answer); !slices.Equal(got, tt.answer) {
				t.Errorf("answer\n%q\nwant\n%q", got, tt.answer)
			}
			if got := rrStrings(resp.Extra); !slices.Equal(got, tt.extra) {
				t.Errorf("additional\n%q\nwant\n%q", got, tt.extra)
			}
			// NXDOMAIN and NODATA carry the SOA for negative caching.
			wantNs := []string{soa}
			if len(tt.answer) > 0 {
				wantNs = nil
			}
			if got := rrStrings(resp.Ns); !slices.Equal(got, wantNs) {
				t.Errorf("authority %q, want %q", got, wantNs)
			}
		})
	}
}

// A PTR for an address the cluster does not have goes upstream, as a
// fallthrough of the reverse zones does in CoreDNS.
func TestReverseUnknownAddressIsForwarded(t *testing.T) {
	up := startUpstream(t)
	up.setAnswer(func(req *dns.Msg, _ bool) *dns.Msg {
		resp := new(dns.Msg).SetReply(req)
		resp.Answer = []dns.RR{newRR(req.Question[0].Name + " 60 IN PTR host.example.")}
		return resp
	})
	h := testHandler(t, up.addr, labCluster()...)
	resp := ask(t, h, "9.9.9.10.in-addr.arpa.", dns.TypePTR)
	want := []string{"9.9.9.10.in-addr.arpa. 60 IN PTR host.example."}
	if got := rrStrings(resp.Answer); !slices.Equal(got, want) {
		t.Errorf("answer %q, want %q", got, want)
	}
	if resp.Authoritative {
		t.Error("forwarded answer is authoritative")
	}
	if n := up.queries.Load(); n != 1 {
		t.Errorf("upstream got %d questions, want 1", n)
	}
}

// Until the informers have listed the cluster, names in the zone get
// SERVFAIL rather than a wrong NXDOMAIN; other names are forwarded.
func TestZoneBeforeSync(t *testing.T) {
	up := startUpstream(t)
	cluster, err := NewCluster(fake.NewClientset(labCluster()...), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	h := newTestHandler(cluster, up.addr)
	if resp := ask(t, h, "frontend.web.svc.cluster.local.", dns.TypeA); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s before sync, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	if resp := ask(t, h, "example.org.", dns.TypeA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("forwarded answer before sync: %v", resp)
	}
}
