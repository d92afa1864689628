package probe_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/probe"
	"github.com/kubectl-nettrace/nettrace/trace/probe/probetest"
)

// quiet is the timeout of probes that are expected to get no answer.
const quiet = 300 * time.Millisecond

func TestSend(t *testing.T) {
	lab := probetest.New(t)
	server, service := probetest.ServerIP, probetest.ServiceIP
	tests := []struct {
		name      string
		spec      probe.Spec
		answer    probe.Answer
		reply     string
		from      netip.Addr
		payload   string
		dnsAnswer []string
		dnsRcode  string
	}{
		{name: "tcp connects", spec: probe.Spec{Kind: probe.TCP, Dst: server, DstPort: probetest.TCPPort},
			answer: probe.Replied, reply: "SYN-ACK", from: server},
		{name: "tcp through service DNAT", spec: probe.Spec{Kind: probe.TCP, Dst: service, DstPort: 80},
			answer: probe.Replied, reply: "SYN-ACK", from: service},
		{name: "tcp refused", spec: probe.Spec{Kind: probe.TCP, Dst: server, DstPort: probetest.ClosedTCPPort},
			answer: probe.Refused, reply: "RST", from: server},
		{name: "tcp refused through service DNAT", spec: probe.Spec{Kind: probe.TCP, Dst: service, DstPort: 81},
			answer: probe.Refused, reply: "RST", from: service},
		{name: "tcp dropped", spec: probe.Spec{Kind: probe.TCP, Dst: probetest.SilentIP, DstPort: 80, Timeout: quiet},
			answer: probe.NoAnswer, reply: "nothing within 300ms"},
		{name: "tcp rejected", spec: probe.Spec{Kind: probe.TCP, Dst: probetest.RejectedIP, DstPort: 80},
			answer: probe.Unreachable, reply: "ICMP administratively prohibited from 10.1.0.1", from: probetest.RouterClientIP},
		{name: "udp echoed", spec: probe.Spec{Kind: probe.UDP, Dst: server, DstPort: probetest.EchoPort, Payload: []byte("hello")},
			answer: probe.Replied, reply: "UDP reply of 5 bytes", from: server, payload: "hello"},
		{name: "udp echoed through service DNAT", spec: probe.Spec{Kind: probe.UDP, Dst: service, DstPort: 7},
			answer: probe.Replied, reply: "UDP reply of 22 bytes", from: service, payload: "kubectl-nettrace probe"},
		{name: "udp port unreachable", spec: probe.Spec{Kind: probe.UDP, Dst: server, DstPort: probetest.ClosedUDPPort},
			answer: probe.Refused, reply: "ICMP port unreachable from 10.2.0.2", from: server},
		{name: "udp dropped", spec: probe.Spec{Kind: probe.UDP, Dst: probetest.SilentIP, DstPort: 7, Timeout: quiet},
			answer: probe.NoAnswer, reply: "nothing within 300ms"},
		{name: "icmp echo", spec: probe.Spec{Kind: probe.ICMP, Dst: server},
			answer: probe.Replied, reply: "echo reply", from: server},
		{name: "icmp echo through service DNAT", spec: probe.Spec{Kind: probe.ICMP, Dst: service},
			answer: probe.Replied, reply: "echo reply", from: service},
		{name: "icmp dropped", spec: probe.Spec{Kind: probe.ICMP, Dst: probetest.SilentIP, Timeout: quiet},
			answer: probe.NoAnswer, reply: "nothing within 300ms"},
		{name: "icmp rejected", spec: probe.Spec{Kind: probe.ICMP, Dst: probetest.RejectedIP},
			answer: probe.Unreachable, reply: "ICMP administratively prohibited from 10.1.0.1", from: probetest.RouterClientIP},
		{name: "dns answer", spec: probe.Spec{Kind: probe.DNS, Dst: service, Question: "server.lab.test"},
			answer: probe.Replied, reply: "DNS NOERROR: A 10.2.0.2", from: service,
			dnsAnswer: []string{"A 10.2.0.2"}, dnsRcode: "NOERROR"},
		{name: "dns nxdomain", spec: probe.Spec{Kind: probe.DNS, Dst: service, Question: "nobody.lab.test."},
			answer: probe.Replied, reply: "DNS NXDOMAIN", from: service, dnsRcode: "NXDOMAIN"},
		{name: "dns port unreachable", spec: probe.Spec{Kind: probe.DNS, Dst: server, DstPort: probetest.ClosedUDPPort, Question: "x."},
			answer: probe.Refused, reply: "ICMP port unreachable from 10.2.0.2", from: server},
		{name: "dns dropped", spec: probe.Spec{Kind: probe.DNS, Dst: probetest.SilentIP, Question: "x.", Timeout: quiet},
			answer: probe.NoAnswer, reply: "nothing within 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p *probe.Probe
			err := lab.Client.Do(func(ns.NetNS) error {
				var err error
				p, err = probe.Plan(tt.spec)
				return err
			})
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			flow := p.Flow()
			wantProto := map[probe.Kind]trace.Proto{probe.TCP: trace.TCP, probe.UDP: trace.UDP,
				probe.DNS: trace.UDP, probe.ICMP: trace.ICMP}[tt.spec.Kind]
			wantPort := tt.spec.DstPort
			if tt.spec.Kind == probe.DNS && wantPort == 0 {
				wantPort = 53
			}
			if flow.Proto != wantProto || flow.Src != probetest.ClientIP || flow.Dst != tt.spec.Dst ||
				flow.DstPort != wantPort || flow.SrcPort < 40000 || flow.SrcPort > 49999 {
				t.Errorf("planned flow %v, want %s from %s, port 40000-49999, to %s port %d",
					flow, wantProto, probetest.ClientIP, tt.spec.Dst, wantPort)
			}

			// Send from a thread outside the client's netns: the socket
			// Plan opened is what sends.
			res, err := p.Send(context.Background())
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if res.Flow != flow || res.Answer != tt.answer || res.Reply != tt.reply || res.From != tt.from ||
				string(res.Payload) != tt.payload || res.Sent.IsZero() {
				t.Errorf("Send = %+v\nwant answer %s, reply %q from %s, payload %q", res, tt.answer, tt.reply, tt.from, tt.payload)
			}
			if (res.RTT > 0) != (tt.answer != probe.NoAnswer) {
				t.Errorf("RTT = %s for answer %s", res.RTT, res.Answer)
			}
			if tt.dnsRcode != "" {
				if res.DNS == nil || res.DNS.Rcode != tt.dnsRcode || !slices.Equal(res.DNS.Answers, tt.dnsAnswer) ||
					!res.DNS.Response || res.DNS.Type != "A" {
					t.Errorf("DNS answer %+v, want %s %v", res.DNS, tt.dnsRcode, tt.dnsAnswer)
				}
			}
		})
	}
}

func TestAnswerResult(t *testing.T) {
	for answer, want := range map[probe.Answer]trace.Result{
		probe.Replied: trace.Replied, probe.Refused: trace.Dropped,
		probe.Unreachable: trace.Dropped, probe.NoAnswer: trace.NoAnswer,
	} {
		if got := answer.Result(); got != want {
			t.Errorf("%s.Result() = %s, want %s", answer, got, want)
		}
	}
}

func TestSendHonoursContext(t *testing.T) {
	lab := probetest.New(t)
	var p *probe.Probe
	err := lab.Client.Do(func(ns.NetNS) error {
		var err error
		p, err = probe.Plan(probe.Spec{Kind: probe.TCP, Dst: probetest.SilentIP, DstPort: 80, Timeout: time.Minute})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := p.Send(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Send with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := p.Send(context.Background()); err == nil {
		t.Error("a second Send succeeded, want an error")
	}
}

func TestPlanRejects(t *testing.T) {
	for _, spec := range []probe.Spec{
		{Kind: probe.TCP, Dst: probetest.ServerIP},
		{Kind: probe.UDP, Dst: probetest.ServerIP},
		{Kind: probe.DNS, Dst: probetest.ServerIP},
		{Kind: "sctp", Dst: probetest.ServerIP, DstPort: 80},
		{Kind: probe.TCP, Dst: netip.MustParseAddr("fd00::1"), DstPort: 80},
	} {
		if p, err := probe.Plan(spec); err == nil {
			p.Close()
			t.Errorf("Plan(%+v) succeeded, want an error", spec)
		}
	}
}
