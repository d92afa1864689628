package servicenat

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the generated rules")

// goldenCase is one Snapshot whose rules are pinned in testdata/NAME.golden,
// with the shape checks that say why the golden text is right.
type goldenCase struct {
	name  string
	snap  Snapshot
	check func(t *testing.T, text string)
}

func goldenCases() []goldenCase {
	httpPort := []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}
	return []goldenCase{{
		name: "clusterip-3-endpoints",
		snap: Snapshot{
			Services: []*v1.Service{makeService("default", "web", "10.96.10.1", nil)},
			EndpointSlices: []*discovery.EndpointSlice{makeSlice("default", "web", "web-1", httpPort,
				ready("172.16.1.10", "k8s-w1"), ready("172.16.2.10", "k8s-w2"),
				ready("172.16.1.11", "k8s-w1"), notReady("172.16.2.11", "k8s-w2"))},
		},
		check: func(t *testing.T, text string) {
			svc := ServiceChain("default/web:http", "tcp")
			sep := func(ep string) string { return EndpointChain("default/web:http", "tcp", ep) }
			mustHave(t, text,
				`-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.10.1 --dport 80 -j `+svc,
				`-A `+svc+` -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.10.1 --dport 80 ! -s 172.16.0.0/16 -j KUBE-MARK-MASQ`,
				// Endpoints sorted by "ip:port", probabilities 1/3, 1/2, then the rest.
				`-A `+svc+` -m comment --comment "default/web:http -> 172.16.1.10:8080" -m statistic --mode random --probability 0.3333333333 -j `+sep("172.16.1.10:8080"),
				`-A `+svc+` -m comment --comment "default/web:http -> 172.16.1.11:8080" -m statistic --mode random --probability 0.5000000000 -j `+sep("172.16.1.11:8080"),
				`-A `+svc+` -m comment --comment "default/web:http -> 172.16.2.10:8080" -j `+sep("172.16.2.10:8080"),
				`-A `+sep("172.16.2.10:8080")+` -m comment --comment default/web:http -s 172.16.2.10 -j KUBE-MARK-MASQ`,
				`-A `+sep("172.16.2.10:8080")+` -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 172.16.2.10:8080`,
				`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS`,
			)
			mustNotHave(t, text, "172.16.2.11")
		},
	}, {
		name: "nodeport",
		snap: Snapshot{
			Services: []*v1.Service{makeService("shop", "cart", "10.96.20.2", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
			})},
			EndpointSlices: []*discovery.EndpointSlice{makeSlice("shop", "cart", "cart-1", httpPort,
				ready("172.16.1.20", "k8s-w1"), ready("172.16.2.20", "k8s-w2"))},
		},
		check: func(t *testing.T, text string) {
			ext := ExternalChain("shop/cart:http", "tcp")
			svc := ServiceChain("shop/cart:http", "tcp")
			mustHave(t, text,
				`-A KUBE-NODEPORTS -m comment --comment shop/cart:http -m tcp -p tcp --dport 30080 -j `+ext,
				`-A `+ext+` -m comment --comment "masquerade traffic for shop/cart:http external destinations" -j KUBE-MARK-MASQ`,
				`-A `+ext+` -j `+svc,
			)
			// KUBE-NODEPORTS is jumped to after every service capture.
			last := strings.LastIndex(text, "-A KUBE-SERVICES ")
			if !strings.HasPrefix(text[last:], `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports;`) {
				t.Errorf("the last KUBE-SERVICES rule is not the jump to KUBE-NODEPORTS: %s", text[last:strings.Index(text[last:], "\n")+last])
			}
		},
	}, {
		name: "loadbalancer",
		snap: Snapshot{
			Services: []*v1.Service{
				makeService("edge", "gw", "10.96.30.3", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeLoadBalancer
					s.Spec.Ports[0].NodePort = 31080
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.10.200"}}
				}),
				makeService("edge", "admin", "10.96.30.4", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeLoadBalancer
					s.Spec.Ports[0].NodePort = 31081
					s.Spec.LoadBalancerSourceRanges = []string{"192.168.10.0/24", "203.0.113.0/25"}
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.10.201"}}
				}),
			},
			EndpointSlices: []*discovery.EndpointSlice{
				makeSlice("edge", "gw", "gw-1", httpPort, ready("172.16.2.30", "k8s-w2")),
				makeSlice("edge", "admin", "admin-1", httpPort, ready("172.16.2.31", "k8s-w2")),
			},
		},
		check: func(t *testing.T, text string) {
			fw := FirewallChain("edge/admin:http", "tcp")
			mustHave(t, text,
				`-A KUBE-SERVICES -m comment --comment "edge/gw:http loadbalancer IP" -m tcp -p tcp -d 192.168.10.200 --dport 80 -j `+ExternalChain("edge/gw:http", "tcp"),
				`-A KUBE-SERVICES -m comment --comment "edge/admin:http loadbalancer IP" -m tcp -p tcp -d 192.168.10.201 --dport 80 -j `+fw,
				`-A `+fw+` -m comment --comment "edge/admin:http loadbalancer IP" -s 203.0.113.0/25 -j `+ExternalChain("edge/admin:http", "tcp"),
				// The node is in a source range: its own traffic to the VIP comes from the VIP.
				`-A `+fw+` -m comment --comment "edge/admin:http loadbalancer IP" -s 192.168.10.201 -j `+ExternalChain("edge/admin:http", "tcp"),
				`-A `+fw+` -m comment --comment "other traffic to edge/admin:http will be dropped by KUBE-PROXY-FIREWALL"`,
				`-A KUBE-PROXY-FIREWALL -m comment --comment "edge/admin:http traffic not accepted by `+fw+`" -m tcp -p tcp -d 192.168.10.201 --dport 80 -j DROP`,
			)
		},
	}, {
		name: "etp-local",
		snap: Snapshot{
			Services: []*v1.Service{
				makeService("edge", "ingress", "10.96.40.4", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeLoadBalancer
					s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
					s.Spec.HealthCheckNodePort = 32000
					s.Spec.Ports[0].NodePort = 31443
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.10.210"}}
				}),
				// All its endpoints are on k8s-w2: external traffic is dropped here.
				makeService("edge", "remote", "10.96.40.5", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeNodePort
					s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
					s.Spec.Ports[0].NodePort = 31444
				}),
			},
			EndpointSlices: []*discovery.EndpointSlice{
				makeSlice("edge", "ingress", "ingress-1", httpPort,
					ready("172.16.1.40", "k8s-w1"), ready("172.16.2.40", "k8s-w2")),
				makeSlice("edge", "remote", "remote-1", httpPort, ready("172.16.2.41", "k8s-w2")),
			},
		},
		check: func(t *testing.T, text string) {
			ext := ExternalChain("edge/ingress:http", "tcp")
			svl := LocalServiceChain("edge/ingress:http", "tcp")
			svc := ServiceChain("edge/ingress:http", "tcp")
			mustHave(t, text,
				`-A `+ext+` -m comment --comment "pod traffic for edge/ingress:http external destinations" -s 172.16.0.0/16 -j `+svc,
				`-A `+ext+` -m comment --comment "masquerade LOCAL traffic for edge/ingress:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`,
				`-A `+ext+` -m comment --comment "route LOCAL traffic for edge/ingress:http external destinations" -m addrtype --src-type LOCAL -j `+svc,
				`-A `+ext+` -j `+svl,
				// Only the local endpoint behind KUBE-SVL, with no probability.
				`-A `+svl+` -m comment --comment "edge/ingress:http -> 172.16.1.40:8080" -j `+EndpointChain("edge/ingress:http", "tcp", "172.16.1.40:8080"),
				`-A KUBE-NODEPORTS -m comment --comment "edge/ingress:http health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT`,
				// No local endpoint: external traffic dropped, no jump to a KUBE-SVL.
				`-A KUBE-EXTERNAL-SERVICES -m comment --comment "edge/remote:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 31444 -j DROP`,
			)
			mustNotHave(t, text, LocalServiceChain("edge/remote:http", "tcp"), "-A "+ExternalChain("edge/remote:http", "tcp")+" -j ")
		},
	}, {
		name: "session-affinity",
		snap: Snapshot{
			Services: []*v1.Service{makeService("default", "sticky", "10.96.50.5", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ref[int32](10800)}}
			})},
			EndpointSlices: []*discovery.EndpointSlice{makeSlice("default", "sticky", "sticky-1", httpPort,
				ready("172.16.1.50", "k8s-w1"), ready("172.16.2.50", "k8s-w2"))},
		},
		check: func(t *testing.T, text string) {
			svc := ServiceChain("default/sticky:http", "tcp")
			sep := EndpointChain("default/sticky:http", "tcp", "172.16.1.50:8080")
			mustHave(t, text,
				`-A `+svc+` -m comment --comment "default/sticky:http -> 172.16.1.50:8080" -m recent --name `+sep+` --rcheck --seconds 10800 --reap -j `+sep,
				`-A `+sep+` -m comment --comment default/sticky:http -m recent --name `+sep+` --set -m tcp -p tcp -j DNAT --to-destination 172.16.1.50:8080`,
			)
			// The affinity checks come before the random choice.
			if strings.Index(text, "--rcheck") > strings.Index(text, "--probability") {
				t.Error("an affinity check comes after the random balancing")
			}
		},
	}, {
		name: "no-endpoints",
		snap: Snapshot{
			Services: []*v1.Service{makeService("default", "empty", "10.96.60.6", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30666
			})},
		},
		check: func(t *testing.T, text string) {
			mustHave(t, text,
				`-A KUBE-SERVICES -m comment --comment "default/empty:http has no endpoints" -m tcp -p tcp -d 10.96.60.6 --dport 80 -j REJECT --reject-with icmp-port-unreachable`,
				`-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/empty:http has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30666 -j REJECT --reject-with icmp-port-unreachable`,
			)
			mustNotHave(t, text, "KUBE-SVC-", "KUBE-EXT-", "KUBE-SEP-")
		},
	}, {
		name: "named-ports",
		snap: Snapshot{
			Services: []*v1.Service{makeService("kube-system", "kube-dns", "10.96.0.10", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
					{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP},
					{Name: "metrics", Port: 9153, Protocol: v1.ProtocolTCP},
				}
			})},
			EndpointSlices: []*discovery.EndpointSlice{makeSlice("kube-system", "kube-dns", "kube-dns-1",
				[]discovery.EndpointPort{port("dns", 5353, v1.ProtocolUDP), port("dns-tcp", 5353, v1.ProtocolTCP), port("metrics", 9153, v1.ProtocolTCP)},
				ready("172.16.0.2", "k8s-m"), ready("172.16.1.2", "k8s-w1"))},
		},
		check: func(t *testing.T, text string) {
			mustHave(t, text,
				`-A KUBE-SERVICES -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp -p udp -d 10.96.0.10 --dport 53 -j `+ServiceChain("kube-system/kube-dns:dns", "udp"),
				`-A KUBE-SERVICES -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 53 -j `+ServiceChain("kube-system/kube-dns:dns-tcp", "tcp"),
				// Each port has its own endpoint chains, DNATing to its target port.
				`-A `+EndpointChain("kube-system/kube-dns:dns", "udp", "172.16.0.2:5353")+` -m comment --comment kube-system/kube-dns:dns -m udp -p udp -j DNAT --to-destination 172.16.0.2:5353`,
				`-A `+EndpointChain("kube-system/kube-dns:metrics", "tcp", "172.16.1.2:9153")+` -m comment --comment kube-system/kube-dns:metrics -m tcp -p tcp -j DNAT --to-destination 172.16.1.2:9153`,
			)
		},
	}, {
		name: "headless",
		snap: Snapshot{
			Services: []*v1.Service{makeService("db", "cassandra", v1.ClusterIPNone, nil)},
			EndpointSlices: []*discovery.EndpointSlice{makeSlice("db", "cassandra", "cassandra-1", httpPort,
				ready("172.16.1.70", "k8s-w1"))},
		},
		check: func(t *testing.T, text string) {
			mustNotHave(t, text, "cassandra", "172.16.1.70", "KUBE-SVC-", "KUBE-SEP-")
		},
	}}
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := Build(tc.snap, testConfig).Update(nil).Input
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rules differ from %s (-want +got):\n%s", path, lineDiff(string(want), string(got)))
			}
			tc.check(t, string(got))
			checkWellFormed(t, string(got))
		})
	}
}

// checkWellFormed checks what iptables-restore needs and kube-proxy
// guarantees: every chain a rule jumps to or appends to is declared before
// it, declared once, and names stay within iptables' 28 characters.
func checkWellFormed(t *testing.T, text string) {
	t.Helper()
	builtin := map[string]bool{"ACCEPT": true, "DROP": true, "REJECT": true, "RETURN": true, "DNAT": true, "MARK": true, "MASQUERADE": true}
	var declared map[string]bool
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fields := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "*"):
			declared = map[string]bool{}
		case strings.HasPrefix(line, ":"):
			chain := fields[0][1:]
			if declared[chain] {
				t.Errorf("line %d: chain %s declared twice", n+1, chain)
			}
			if len(chain) > 28 {
				t.Errorf("line %d: chain name %s longer than 28 characters", n+1, chain)
			}
			declared[chain] = true
		case fields[0] == "-A":
			if !declared[fields[1]] {
				t.Errorf("line %d: rule in undeclared chain %s", n+1, fields[1])
			}
			if i := slices.Index(fields, "-j"); i >= 0 && !builtin[fields[i+1]] && !declared[fields[i+1]] {
				t.Errorf("line %d: jump to undeclared chain %s", n+1, fields[i+1])
			}
		}
	}
}

func mustHave(t *testing.T, text string, lines ...string) {
	t.Helper()
	have := strings.Split(text, "\n")
	for _, l := range lines {
		if !slices.Contains(have, l) {
			t.Errorf("missing rule:\n%s", l)
		}
	}
}

func mustNotHave(t *testing.T, text string, fragments ...string) {
	t.Helper()
	for _, f := range fragments {
		if strings.Contains(text, f) {
			t.Errorf("unexpected %q in rules", f)
		}
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	if b.Len() == 0 {
		return "(same lines, different order)"
	}
	return b.String()
}

// TestChainNames pins chain names computed by kube-proxy for the same
// service ports and endpoints.
func TestChainNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{ServiceChain("ns1/svc1:p80", "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O"},
		{EndpointChain("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ"},
		{ExternalChain("ns2/svc2:p80", "tcp"), "KUBE-EXT-GNZBNJ2PO5MGZ6GT"},
		{LocalServiceChain("ns2/svc2:p80", "tcp"), "KUBE-SVL-GNZBNJ2PO5MGZ6GT"},
		{FirewallChain("ns5/svc5:p80", "tcp"), "KUBE-FW-NUKIZ6OKUXPJNT4C"},
		{EndpointChain("ns5/svc5:p80", "tcp", "10.180.0.3:80"), "KUBE-SEP-I77PXRDZVX7PMWMN"},
		{EndpointChain("ns3/svc3:p80", "tcp", "10.180.0.3:80"), "KUBE-SEP-OYPFS5VJICHGATKP"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
}

// TestProbabilities checks kube-proxy's 1/n format.
func TestProbabilities(t *testing.T) {
	for n, want := range map[int]string{2: "0.5000000000", 3: "0.3333333333", 7: "0.1428571429", 1000: "0.0010000000"} {
		if got := probability(n); got != want {
			t.Errorf("probability(%d) = %s, want %s", n, got, want)
		}
	}
}

// TestEndpointSelection covers which endpoints kube-proxy uses: ready ones,
// else serving terminating ones; duplicates across slices; IPv6 slices.
func TestEndpointSelection(t *testing.T) {
	httpPort := []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}
	svc := makeService("default", "web", "10.96.10.1", nil)
	svcChain := ServiceChain("default/web:http", "tcp")
	for _, tc := range []struct {
		name   string
		slices []*discovery.EndpointSlice
		want   []string // endpoints behind KUBE-SVC, in order
	}{{
		name: "terminating ones ignored while some are ready",
		slices: []*discovery.EndpointSlice{makeSlice("default", "web", "a", httpPort,
			ready("172.16.1.1", "k8s-w1"), terminating("172.16.1.2", "k8s-w1", true))},
		want: []string{"172.16.1.1:8080"},
	}, {
		name: "serving terminating ones used when none is ready",
		slices: []*discovery.EndpointSlice{makeSlice("default", "web", "a", httpPort,
			notReady("172.16.1.1", "k8s-w1"), terminating("172.16.1.2", "k8s-w1", true), terminating("172.16.1.3", "k8s-w1", false))},
		want: []string{"172.16.1.2:8080"},
	}, {
		// Sorted as strings, as kube-proxy does: "…1.10:8080" < "…1.1:8080".
		name: "an endpoint in two slices counts once, the non-terminating copy wins",
		slices: []*discovery.EndpointSlice{
			makeSlice("default", "web", "a", httpPort, ready("172.16.1.1", "k8s-w1")),
			makeSlice("default", "web", "b", httpPort, terminating("172.16.1.1", "k8s-w1", true), ready("172.16.1.10", "k8s-w2")),
		},
		want: []string{"172.16.1.10:8080", "172.16.1.1:8080"},
	}, {
		name: "IPv6 slices and unlabelled slices are ignored",
		slices: []*discovery.EndpointSlice{
			func() *discovery.EndpointSlice {
				s := makeSlice("default", "web", "v6", httpPort, ready("fd00::1", "k8s-w1"))
				s.AddressType = discovery.AddressTypeIPv6
				return s
			}(),
			func() *discovery.EndpointSlice {
				s := makeSlice("default", "web", "orphan", httpPort, ready("172.16.9.9", "k8s-w1"))
				s.Labels = nil
				return s
			}(),
			makeSlice("default", "web", "a", httpPort, ready("172.16.1.1", "k8s-w1")),
		},
		want: []string{"172.16.1.1:8080"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			text := string(Build(Snapshot{Services: []*v1.Service{svc}, EndpointSlices: tc.slices}, testConfig).Update(nil).Input)
			var got []string
			for _, l := range strings.Split(text, "\n") {
				if strings.HasPrefix(l, "-A "+svcChain+" ") && strings.Contains(l, " -> ") {
					got = append(got, strings.Fields(l[strings.Index(l, " -> ")+4:])[0])
				}
			}
			for i := range got {
				got[i] = strings.TrimSuffix(got[i], `"`)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("endpoints %v, want %v", got, tc.want)
			}
		})
	}
}

// TestNotes checks that what is left out is said, once.
func TestNotes(t *testing.T) {
	v6 := makeService("default", "v6only", "fd00::10", func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol} })
	badPort := makeService("default", "bad", "10.96.0.20", func(s *v1.Service) { s.Spec.Ports[0].Port = 0 })
	headless := makeService("default", "hl", v1.ClusterIPNone, nil)
	empty := makeService("default", "empty", "10.96.0.21", nil)
	r := Build(Snapshot{Services: []*v1.Service{v6, badPort, headless, empty, empty}}, testConfig)
	want := []string{
		`service default/hl is headless (clusterIP "None"): no rules`,
		"service default/v6only has no IPv4 ClusterIP (clusterIPs [fd00::10]): ignored, this dataplane is IPv4 only",
		"service port default/bad:http has invalid port 0: ignored",
		"service port default/empty:http has no ready endpoints: its traffic is rejected",
	}
	if got := r.Notes(); !slices.Equal(got, want) {
		t.Errorf("notes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	text := string(r.Update(nil).Input)
	mustNotHave(t, text, "fd00::10", "default/bad:http", "default/hl")
}

// TestLargeClusterDropsEndpointComments checks kube-proxy's large-cluster
// mode: above 1000 endpoints the per-endpoint rules have no comment.
func TestLargeClusterDropsEndpointComments(t *testing.T) {
	for _, tc := range []struct {
		services int
		comments bool
	}{{200, true}, {201, false}} {
		text := string(Build(manyServices(tc.services, 5), testConfig).Update(nil).Input)
		sep := EndpointChain("bench/svc-00000:http", "tcp", "172.16.0.2:8080")
		withComment := `-A ` + sep + ` -m comment --comment bench/svc-00000:http -s 172.16.0.2 -j KUBE-MARK-MASQ`
		without := `-A ` + sep + ` -s 172.16.0.2 -j KUBE-MARK-MASQ`
		if tc.comments {
			mustHave(t, text, withComment)
		} else {
			mustHave(t, text, without)
		}
		// The ClusterIP capture keeps its comment in both modes.
		mustHave(t, text, `-A KUBE-SERVICES -m comment --comment "bench/svc-00000:http cluster IP" -m tcp -p tcp -d 10.96.0.0 --dport 80 -j `+ServiceChain("bench/svc-00000:http", "tcp"))
	}
}

// TestUpdate checks the partial-sync input: only changed services' chains,
// stale chains flushed and deleted, and no input needed when nothing changed.
func TestUpdate(t *testing.T) {
	httpPort := []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}
	a := makeService("default", "a", "10.96.0.1", nil)
	b := makeService("default", "b", "10.96.0.2", nil)
	c := makeService("default", "c", "10.96.0.3", nil)
	sliceA := makeSlice("default", "a", "a-1", httpPort, ready("172.16.1.1", "k8s-w1"))
	sliceB := makeSlice("default", "b", "b-1", httpPort, ready("172.16.1.2", "k8s-w1"))
	sliceB2 := makeSlice("default", "b", "b-1", httpPort, ready("172.16.1.3", "k8s-w1"))
	sliceC := makeSlice("default", "c", "c-1", httpPort, ready("172.16.1.4", "k8s-w1"))

	before := Build(Snapshot{Services: []*v1.Service{a, b, c}, EndpointSlices: []*discovery.EndpointSlice{sliceA, sliceB, sliceC}}, testConfig)
	same := Build(Snapshot{Services: []*v1.Service{c, b, a}, EndpointSlices: []*discovery.EndpointSlice{sliceC, sliceB, sliceA}}, testConfig)
	if u := same.Update(before.Programmed()); !u.Noop || u.Rewritten != 0 || u.Deleted != 0 {
		t.Errorf("same snapshot: rewritten %d deleted %d noop %v, want a no-op", u.Rewritten, u.Deleted, u.Noop)
	}

	after := Build(Snapshot{Services: []*v1.Service{a, b}, EndpointSlices: []*discovery.EndpointSlice{sliceA, sliceB2}}, testConfig)
	u := after.Update(before.Programmed())
	if u.Noop || u.Rewritten != 1 || u.Deleted != 3 {
		t.Errorf("got rewritten %d deleted %d noop %v, want 1, 3 (c's KUBE-SVC and KUBE-SEP, b's old KUBE-SEP), false", u.Rewritten, u.Deleted, u.Noop)
	}
	text := string(u.Input)
	oldSEP := EndpointChain("default/b:http", "tcp", "172.16.1.2:8080")
	mustHave(t, text,
		":"+ServiceChain("default/b:http", "tcp")+" - [0:0]",
		":"+EndpointChain("default/b:http", "tcp", "172.16.1.3:8080")+" - [0:0]",
		":"+oldSEP+" - [0:0]", "-X "+oldSEP,
		"-X "+ServiceChain("default/c:http", "tcp"),
		// The top-level chains changed (c's capture went): rewritten, with
		// a's capture.
		":KUBE-SERVICES - [0:0]",
		`-A KUBE-SERVICES -m comment --comment "default/a:http cluster IP" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j `+ServiceChain("default/a:http", "tcp"),
	)
	mustNotHave(t, text, ":"+ServiceChain("default/a:http", "tcp"), "-A "+ServiceChain("default/a:http", "tcp"))

	// From iptables-save: everything rewritten, leftovers deleted, foreign
	// chains untouched.
	saved := []byte("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n:CNI-FOO - [0:0]\n:" +
		ServiceChain("default/a:http", "tcp") + " - [0:0]\nCOMMIT\n")
	u = after.Update(ReadProgrammed(saved))
	if u.Rewritten != 2 || u.Deleted != 1 {
		t.Errorf("from iptables-save: rewritten %d deleted %d, want 2 and 1", u.Rewritten, u.Deleted)
	}
	mustHave(t, string(u.Input), "-X KUBE-SVC-AAAAAAAAAAAAAAAA")
	mustNotHave(t, string(u.Input), "KUBE-KUBELET-CANARY", "CNI-FOO", "PREROUTING")
}

// TestConfigOptions checks how each kube-proxy option shows in the rules.
func TestConfigOptions(t *testing.T) {
	snap := Snapshot{
		Services: []*v1.Service{makeService("default", "web", "10.96.10.1", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		})},
		EndpointSlices: []*discovery.EndpointSlice{makeSlice("default", "web", "web-1",
			[]discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}, ready("172.16.1.10", testNode))},
	}
	svc := ServiceChain("default/web:http", "tcp")
	nodePorts := `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" `
	for _, tc := range []struct {
		name     string
		change   func(*Config)
		have     []string
		haveNone []string
	}{{
		name:   "localhost NodePorts",
		change: func(c *Config) { c.LocalhostNodePorts = true },
		have: []string{
			nodePorts + `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`,
			":KUBE-FIREWALL - [0:0]",
			`-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
		},
		haveNone: []string{"! -d 127.0.0.0/8"},
	}, {
		name:     "NodePorts on node IPs only",
		change:   func(c *Config) { c.NodePortsOnNodeIPs = true },
		have:     []string{nodePorts + `-d 192.168.10.101 -j KUBE-NODEPORTS`},
		haveNone: []string{"--dst-type LOCAL -j KUBE-NODEPORTS", "KUBE-FIREWALL"},
	}, {
		name:     "masquerade all",
		change:   func(c *Config) { c.MasqueradeAll = true },
		have:     []string{`-A ` + svc + ` -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.10.1 --dport 80 -j KUBE-MARK-MASQ`},
		haveNone: []string{"! -s 172.16.0.0/16"},
	}, {
		name:     "no cluster CIDR: no off-cluster masquerade",
		change:   func(c *Config) { c.ClusterCIDR = netip.Prefix{} },
		haveNone: []string{"cluster IP\" -m tcp -p tcp -d 10.96.10.1 --dport 80 ! -s", "-A " + svc + " -m comment --comment \"default/web:http cluster IP\""},
	}, {
		name:     "liberal conntrack: INVALID packets not dropped",
		change:   func(c *Config) { c.ConntrackTCPLiberal = true },
		haveNone: []string{"--ctstate INVALID"},
	}, {
		name:   "masquerade mark",
		change: func(c *Config) { c.MasqueradeMark = 0x1000 },
		have: []string{
			"-A KUBE-MARK-MASQ -j MARK --or-mark 0x00001000",
			"-A KUBE-POSTROUTING -m mark ! --mark 0x00001000/0x00001000 -j RETURN",
		},
		haveNone: []string{"0x00004000"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig
			tc.change(&cfg)
			text := string(Build(snap, cfg).Update(nil).Input)
			mustHave(t, text, tc.have...)
			mustNotHave(t, text, tc.haveNone...)
			checkWellFormed(t, text)
		})
	}
}

// TestTrafficPolicies covers internalTrafficPolicy Local and external IPs.
func TestTrafficPolicies(t *testing.T) {
	httpPort := []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}
	local := v1.ServiceInternalTrafficPolicyLocal
	itp := func(s *v1.Service) { s.Spec.InternalTrafficPolicy = &local }
	snap := Snapshot{
		Services: []*v1.Service{
			makeService("default", "here", "10.96.70.1", itp),
			makeService("default", "elsewhere", "10.96.70.2", itp),
			makeService("default", "external", "10.96.70.3", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.168.10.250", "fd00::1"} }),
		},
		EndpointSlices: []*discovery.EndpointSlice{
			makeSlice("default", "here", "here-1", httpPort, ready("172.16.1.71", testNode), ready("172.16.2.71", "k8s-w2")),
			makeSlice("default", "elsewhere", "elsewhere-1", httpPort, ready("172.16.2.72", "k8s-w2")),
			makeSlice("default", "external", "external-1", httpPort, ready("172.16.2.73", "k8s-w2")),
		},
	}
	r := Build(snap, testConfig)
	text := string(r.Update(nil).Input)
	svl := LocalServiceChain("default/here:http", "tcp")
	ext := ExternalChain("default/external:http", "tcp")
	mustHave(t, text,
		`-A KUBE-SERVICES -m comment --comment "default/here:http cluster IP" -m tcp -p tcp -d 10.96.70.1 --dport 80 -j `+svl,
		`-A `+svl+` -m comment --comment "default/here:http -> 172.16.1.71:8080" -j `+EndpointChain("default/here:http", "tcp", "172.16.1.71:8080"),
		`-A KUBE-SERVICES -m comment --comment "default/elsewhere:http has no local endpoints" -m tcp -p tcp -d 10.96.70.2 --dport 80 -j DROP`,
		`-A KUBE-SERVICES -m comment --comment "default/external:http external IP" -m tcp -p tcp -d 192.168.10.250 --dport 80 -j `+ext,
		`-A `+ext+` -m comment --comment "masquerade traffic for default/external:http external destinations" -j KUBE-MARK-MASQ`,
	)
	mustNotHave(t, text, "172.16.2.71", ServiceChain("default/here:http", "tcp"), "fd00::1")
	if !slices.Contains(r.Notes(), `service default/external: externalIP "fd00::1" is not IPv4: ignored`) {
		t.Errorf("the IPv6 external IP is not noted: %q", r.Notes())
	}
	checkWellFormed(t, text)
}

// TestUnnamedPort checks that a single unnamed port is "namespace/name" in
// comments and hashes, and matches the slice port named "".
func TestUnnamedPort(t *testing.T) {
	svc := makeService("default", "plain", "10.96.80.1", func(s *v1.Service) { s.Spec.Ports[0].Name = "" })
	slice := makeSlice("default", "plain", "plain-1", []discovery.EndpointPort{port("", 8080, v1.ProtocolTCP)}, ready("172.16.1.80", testNode))
	text := string(Build(Snapshot{Services: []*v1.Service{svc}, EndpointSlices: []*discovery.EndpointSlice{slice}}, testConfig).Update(nil).Input)
	mustHave(t, text,
		`-A KUBE-SERVICES -m comment --comment "default/plain cluster IP" -m tcp -p tcp -d 10.96.80.1 --dport 80 -j `+ServiceChain("default/plain", "tcp"),
		`-A `+EndpointChain("default/plain", "tcp", "172.16.1.80:8080")+` -m comment --comment default/plain -m tcp -p tcp -j DNAT --to-destination 172.16.1.80:8080`,
	)
}

// TestLocalhostNodePortRules checks kube-proxy's localhost NodePort rules:
// the nfacct counters' rules when the counters exist, and no localhost
// NodePorts when NodePorts are limited to non-loopback node IPs.
func TestLocalhostNodePortRules(t *testing.T) {
	cfg := testConfig
	cfg.LocalhostNodePorts, cfg.CountInvalidDrops, cfg.CountLocalhostNodePorts = true, true, true
	text := string(Build(goldenSnapshot(), cfg).Update(nil).Input)
	ext := ExternalChain("shop/cart:http", "tcp")
	mustHave(t, text,
		`-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP`,
		`-A KUBE-NODEPORTS -m comment --comment shop/cart:http -m tcp -p tcp -d 127.0.0.0/8 --dport 30080 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j `+ext,
		`-A KUBE-NODEPORTS -m comment --comment shop/cart:http -m tcp -p tcp --dport 30080 -j `+ext,
		`-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
		`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`,
	)
	if strings.Index(text, "-d 127.0.0.0/8 --dport 30080") > strings.Index(text, "--dport 30080 -j") {
		t.Error("the localhost NodePort rule does not come first")
	}
	checkWellFormed(t, text)

	cfg.NodePortsOnNodeIPs = true
	text = string(Build(goldenSnapshot(), cfg).Update(nil).Input)
	mustNotHave(t, text, "localhost_nps_accepted_pkts", "KUBE-FIREWALL", "127.0.0.0/8")
	mustHave(t, text, `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -d 192.168.10.101 -j KUBE-NODEPORTS`)
}

// withVersions gives every object of snap a UID and the resource version
// version, as objects from the API have.
func withVersions(snap Snapshot, version string) Snapshot {
	for _, s := range snap.Services {
		s.UID, s.ResourceVersion = types.UID("uid-"+s.Name), version
	}
	for _, s := range snap.EndpointSlices {
		s.ResourceVersion = version
	}
	return snap
}

// TestRebuild checks that Rebuild gives Build's rules, reusing the rules of
// the unchanged services only, and that a partial update then rewrites
// neither the filter table nor the top-level nat chains when only endpoints
// changed.
func TestRebuild(t *testing.T) {
	same := func(t *testing.T, got, want *Ruleset) {
		t.Helper()
		if g, w := got.Update(nil).Input, want.Update(nil).Input; !bytes.Equal(g, w) {
			t.Errorf("Rebuild differs from Build (-Build +Rebuild):\n%s", lineDiff(string(w), string(g)))
		}
		if !slices.Equal(got.Notes(), want.Notes()) {
			t.Errorf("notes %q, want %q", got.Notes(), want.Notes())
		}
	}
	snap := withVersions(manyServices(150, 5), "1")
	first := Build(snap, testConfig)
	svc0, svc1 := types.NamespacedName{Namespace: "bench", Name: "svc-00000"}, types.NamespacedName{Namespace: "bench", Name: "svc-00001"}

	// One service's endpoint moves.
	snap.EndpointSlices[0].Endpoints[0].Addresses[0] = "172.16.255.250"
	snap.EndpointSlices[0].ResourceVersion = "2"
	second := Rebuild(first, snap, testConfig)
	same(t, second, Build(snap, testConfig))
	if second.byName[svc1] != first.byName[svc1] {
		t.Error("an unchanged service's rules were rebuilt")
	}
	if second.byName[svc0] == first.byName[svc0] {
		t.Error("the changed service's rules were reused")
	}
	u := second.Update(first.Programmed())
	if u.Rewritten != 1 || u.Deleted != 1 {
		t.Errorf("rewritten %d deleted %d, want 1 and 1 (the moved endpoint's chain)", u.Rewritten, u.Deleted)
	}
	mustNotHave(t, string(u.Input), "*filter", ":KUBE-SERVICES", "svc-00001")

	// Another Config: nothing is reused.
	cfg := testConfig
	cfg.MasqueradeAll = true
	same(t, Rebuild(second, snap, cfg), Build(snap, cfg))

	// A service deleted and 60 added: past 1000 endpoints, every endpoint
	// rule loses its comment.
	bigger := withVersions(manyServices(210, 5), "1")
	bigger.Services = bigger.Services[1:]
	third := Rebuild(second, bigger, testConfig)
	same(t, third, Build(bigger, testConfig))
	if !third.largeCluster || third.byName[svc1] == second.byName[svc1] {
		t.Error("crossing the large-cluster threshold reused rules")
	}
	if _, ok := third.byName[svc0]; ok {
		t.Error("the deleted service is still there")
	}
}
