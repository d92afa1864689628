package cluster

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{in: "pod-a", want: "pod-a"},
		{in: "pod/pod-a", want: "pod-a"},
		{in: "po/pod-a", want: "pod-a"},
		{in: "svc/web", err: "a trace starts from a pod"},
		{in: "Pod_A", err: "not a pod name"},
		{in: "", err: "not a pod name"},
	} {
		got, err := ParseSource(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseSource(%q) = %q, %v; want an invalid error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseSource(%q) = %q, %v; want %q", c.in, got, err, c.want)
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
