package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// sendUDP connects the reserved socket, so that the kernel reports ICMP
// errors to it, sends the datagram or DNS query, and waits for the reply.
func (p *Probe) sendUDP(ctx context.Context, deadline time.Time) (Result, error) {
	sent := time.Now()
	if err := unix.Connect(p.fd, &unix.SockaddrInet4{Port: int(p.spec.DstPort), Addr: p.spec.Dst.As4()}); err != nil {
		if r, ok := unsendable(err, sent); ok {
			return r, nil
		}
		return Result{}, fmt.Errorf("connecting: %w", err)
	}
	f := os.NewFile(uintptr(p.fd), "udp probe")
	p.fd = -1
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return Result{}, fmt.Errorf("wrapping socket: %w", err)
	}
	defer c.Close()
	conn, ok := c.(*net.UDPConn)
	if !ok {
		return Result{}, fmt.Errorf("socket is a %T, not UDP", c)
	}
	stop, err := waitUntil(ctx, conn, deadline)
	if err != nil {
		return Result{}, err
	}
	defer stop()

	var r Result
	if p.spec.Kind == DNS {
		r, err = p.exchangeDNS(conn)
	} else {
		r, err = p.exchangeDatagram(conn)
	}
	r.Sent, r.RTT = sent, time.Since(sent)
	if err == nil {
		return r, nil
	}
	if none, ctxErr := timedOut(ctx, err); none {
		return p.silence(sent), ctxErr
	}
	rc, rcErr := conn.SyscallConn()
	if rcErr == nil {
		if icmpErr, ok := queuedICMPError(rc); ok {
			r.Answer, r.Reply, r.From = icmpErr.answer(), icmpErr.String(), icmpErr.from
			return r, nil
		}
	}
	if errors.Is(err, unix.ECONNREFUSED) {
		r.Answer, r.Reply = Refused, "ICMP port unreachable"
		return r, nil
	}
	if r, ok := unsendable(err, sent); ok {
		return r, nil
	}
	return Result{}, err
}

// exchangeDatagram sends the payload and reads one datagram back.
func (p *Probe) exchangeDatagram(conn *net.UDPConn) (Result, error) {
	if _, err := conn.Write(p.spec.Payload); err != nil {
		return Result{}, fmt.Errorf("sending datagram: %w", err)
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		return Result{}, err
	}
	return Result{Answer: Replied, Reply: fmt.Sprintf("UDP reply of %d bytes", n), From: p.spec.Dst,
		Payload: buf[:n]}, nil
}

// exchangeDNS sends the query with miekg/dns over the probe's socket and
// reads the response that carries the query's ID.
func (p *Probe) exchangeDNS(conn *net.UDPConn) (Result, error) {
	query := new(dns.Msg).SetQuestion(dns.Fqdn(p.spec.Question), p.spec.QType)
	query.Id = uint16(rand.Uint32())
	dc := &dns.Conn{Conn: conn, UDPSize: dns.DefaultMsgSize}
	if err := dc.WriteMsg(query); err != nil {
		return Result{}, fmt.Errorf("sending DNS query: %w", err)
	}
	for {
		resp, err := dc.ReadMsg()
		if err != nil {
			return Result{}, err
		}
		if resp.Id != query.Id {
			continue
		}
		answer := describeDNS(resp)
		reply := "DNS " + answer.Rcode
		if len(answer.Answers) > 0 {
			reply += ": " + strings.Join(answer.Answers, ", ")
		}
		return Result{Answer: Replied, From: p.spec.Dst, DNS: answer, Reply: reply}, nil
	}
}

// describeDNS converts a DNS response to the trace model; each answer is
// written as its type and data, such as "A 10.96.0.1".
func describeDNS(m *dns.Msg) *trace.DNS {
	d := &trace.DNS{ID: m.Id, Response: m.Response, Rcode: dns.RcodeToString[m.Rcode]}
	if len(m.Question) > 0 {
		d.Question = m.Question[0].Name
		d.Type = dns.TypeToString[m.Question[0].Qtype]
	}
	for _, rr := range m.Answer {
		data := strings.TrimPrefix(rr.String(), rr.Header().String())
		d.Answers = append(d.Answers, dns.TypeToString[rr.Header().Rrtype]+" "+data)
	}
	return d
}
