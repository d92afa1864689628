package cluster

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	for _, c := range []struct{ in, pod, addr, err string }{
		{in: "pod-a", pod: "pod-a"},
		{in: "pod/pod-a", pod: "pod-a"},
		{in: "po/pod-a", pod: "pod-a"},
		{in: "ip/192.168.10.1", addr: "192.168.10.1"},
		{in: "ip/203.0.113.7", addr: "203.0.113.7"},
		{in: "svc/web", err: "a trace starts from a pod, NAME or pod/NAME, or from an address outside the cluster"},
		{in: "Pod_A", err: "not a pod name"},
		{in: "", err: "not a pod name"},
		{in: "ip/192.168.10", err: `bad IP "192.168.10"`},
		{in: "ip/fd00::1", err: "IPv6 is not supported yet"},
		{in: "ip/127.0.0.1", err: "127.0.0.1 cannot be the source of a flow"},
		{in: "ip/0.0.0.0", err: "cannot be the source"},
	} {
		got, err := ParseSource(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseSource(%q) = %+v, %v; want an invalid error with %q", c.in, got, err, c.err)
			}
			continue
		}
		addr := ""
		if got.Outside() {
			addr = got.Addr.String()
		}
		if err != nil || got.Pod != c.pod || addr != c.addr || got.Given != c.in {
			t.Errorf("ParseSource(%q) = %+v, %v; want pod %q, address %q", c.in, got, err, c.pod, c.addr)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		in   string
		want TargetRef
		err  string
	}{
		{in: "svc-b", want: TargetRef{Kind: TargetService, Name: "svc-b"}},
		{in: "svc-b:8080", want: TargetRef{Kind: TargetService, Name: "svc-b", Port: 8080}},
		{in: "svc/b", want: TargetRef{Kind: TargetService, Name: "b"}},
		{in: "service/b:http", want: TargetRef{Kind: TargetService, Name: "b", PortName: "http"}},
		{in: "pod/x", want: TargetRef{Kind: TargetPod, Name: "x"}},
		{in: "pod/x:80", want: TargetRef{Kind: TargetPod, Name: "x", Port: 80}},
		{in: "10.96.0.10:53", want: TargetRef{Kind: TargetIP, Addr: netip.MustParseAddr("10.96.0.10"), Port: 53}},
		{in: "172.16.1.5", want: TargetRef{Kind: TargetIP, Addr: netip.MustParseAddr("172.16.1.5")}},
		{in: "node/k8s-w2:31000", want: TargetRef{Kind: TargetNodePort, Name: "k8s-w2", Port: 31000}},
		{in: "web.example.com:443", want: TargetRef{Kind: TargetDNS, Name: "web.example.com", Port: 443}},
		{in: "nginx-test.default.svc.cluster.local.", want: TargetRef{Kind: TargetDNS, Name: "nginx-test.default.svc.cluster.local"}},
		{in: "external:192.168.10.250:80", want: TargetRef{Kind: TargetExternal, Addr: netip.MustParseAddr("192.168.10.250"), Port: 80}},
		{in: "node/k8s-w2", err: "needs its number"},
		{in: "pod/x:http", err: "bad port"},
		{in: "svc-b:0", err: "bad port"},
		{in: "svc-b:70000", err: "bad port"},
		{in: "deploy/web", err: "unknown kind"},
		{in: "[fd00::1]:80", err: "IPv6"},
		{in: "fd00::1", err: "IPv6"},
		{in: "external:fd00::1:80", err: "IPv6"},
		{in: "external:300.1.1.1:80", err: "bad IP"},
		{in: "Bad_Name", err: "not a service name"},
	} {
		got, err := ParseTarget(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseTarget(%q) = %+v, %v; want an invalid error with %q", c.in, got, err, c.err)
			}
			continue
		}
		c.want.Given = c.in
		if err != nil || got != c.want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}
