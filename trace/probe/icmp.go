package probe

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// echoSeq is the sequence number of the one echo request a probe sends.
const echoSeq = 1

// sendICMP sends an echo request with the reserved identifier on the raw
// socket and waits for the echo reply with that identifier, or an ICMP error
// that quotes the request.
func (p *Probe) sendICMP(ctx context.Context, deadline time.Time) (Result, error) {
	id := int(p.flow.SrcPort)
	request, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho,
		Body: &icmp.Echo{ID: id, Seq: echoSeq, Data: p.spec.Payload}}).Marshal(nil)
	if err != nil {
		return Result{}, fmt.Errorf("building echo request: %w", err)
	}
	stop, err := waitUntil(ctx, p.icmp, deadline)
	if err != nil {
		return Result{}, err
	}
	defer stop()

	sent := time.Now()
	if _, err := p.icmp.WriteTo(request, &net.IPAddr{IP: p.spec.Dst.AsSlice()}); err != nil {
		if r, ok := unsendable(err, sent); ok {
			return r, nil
		}
		return Result{}, fmt.Errorf("sending echo request: %w", err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := p.icmp.ReadFrom(buf)
		if err != nil {
			if none, ctxErr := timedOut(ctx, err); none {
				return p.silence(sent), ctxErr
			}
			return Result{}, fmt.Errorf("reading ICMP: %w", err)
		}
		rtt := time.Since(sent)
		m, err := icmp.ParseMessage(ipv4.ICMPTypeEcho.Protocol(), buf[:n])
		if err != nil {
			continue // not for us to judge: the raw socket sees all ICMP
		}
		sender := addrOf(from)
		var quoted []byte
		switch body := m.Body.(type) {
		case *icmp.Echo:
			if m.Type == ipv4.ICMPTypeEchoReply && body.ID == id && body.Seq == echoSeq {
				return Result{Answer: Replied, Reply: "echo reply", From: sender, Sent: sent, RTT: rtt}, nil
			}
		case *icmp.DstUnreach:
			quoted = body.Data
		case *icmp.TimeExceeded:
			quoted = body.Data
		}
		if quotesEcho(quoted, id) {
			e := icmpError{from: sender, typ: uint8(m.Type.(ipv4.ICMPType)), code: uint8(m.Code)}
			return Result{Answer: e.answer(), Reply: e.String(), From: sender, Sent: sent, RTT: rtt}, nil
		}
	}
}

// quotesEcho reports whether the packet an ICMP error quotes (its IPv4
// header and first 8 bytes) is an echo request with identifier id.
func quotesEcho(quoted []byte, id int) bool {
	if len(quoted) < 20 || quoted[0]>>4 != 4 {
		return false
	}
	ihl := int(quoted[0]&0x0f) * 4
	if quoted[9] != 1 || len(quoted) < ihl+8 {
		return false
	}
	inner := quoted[ihl:]
	return inner[0] == byte(ipv4.ICMPTypeEcho) && int(binary.BigEndian.Uint16(inner[4:6])) == id
}

// addrOf is the address of a raw socket's peer.
func addrOf(a net.Addr) netip.Addr {
	ip, ok := a.(*net.IPAddr)
	if !ok {
		return netip.Addr{}
	}
	addr, _ := netip.AddrFromSlice(ip.IP)
	return addr.Unmap()
}
