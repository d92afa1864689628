package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// sendTCP starts a connection from the reserved socket and waits for the
// handshake's answer: a SYN-ACK connects, a RST or ICMP error fails it.
func (p *Probe) sendTCP(ctx context.Context, deadline time.Time) (Result, error) {
	sent := time.Now()
	err := unix.Connect(p.fd, &unix.SockaddrInet4{Port: int(p.spec.DstPort), Addr: p.spec.Dst.As4()})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		if r, ok := unsendable(err, sent); ok {
			return r, nil
		}
		return Result{}, fmt.Errorf("connecting: %w", err)
	}
	// The socket is registered with the poller only now, while it waits in
	// SYN-SENT: an unconnected socket would read as writable at once.
	f := os.NewFile(uintptr(p.fd), "tcp probe")
	p.fd = -1
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return Result{}, err
	}
	stop, err := waitUntil(ctx, f, deadline)
	if err != nil {
		return Result{}, err
	}
	defer stop()

	var connectErr error
	waitErr := rc.Write(func(fd uintptr) bool {
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connectErr = err
			return true
		}
		if soErr != 0 {
			connectErr = unix.Errno(soErr)
			return true
		}
		_, err = unix.Getpeername(int(fd))
		return !errors.Is(err, unix.ENOTCONN) // still in SYN-SENT
	})
	rtt := time.Since(sent)
	if waitErr != nil {
		if none, err := timedOut(ctx, waitErr); none {
			return p.silence(sent), err
		}
		return Result{}, fmt.Errorf("waiting for the handshake: %w", waitErr)
	}
	r := Result{Sent: sent, RTT: rtt}
	switch {
	case connectErr == nil:
		r.Answer, r.Reply, r.From = Replied, "SYN-ACK", p.spec.Dst
	case errors.Is(connectErr, unix.ETIMEDOUT):
		return p.silence(sent), nil
	default:
		if icmpErr, ok := queuedICMPError(rc); ok {
			r.Answer, r.Reply, r.From = icmpErr.answer(), icmpErr.String(), icmpErr.from
		} else if errors.Is(connectErr, unix.ECONNREFUSED) {
			r.Answer, r.Reply, r.From = Refused, "RST", p.spec.Dst
		} else {
			return Result{}, fmt.Errorf("connecting: %w", connectErr)
		}
	}
	return r, nil
}
