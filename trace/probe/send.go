package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Send sends the probe and waits for its answer, at most the spec's
// Timeout or until ctx ends. It releases the probe's socket. Only an error
// of the probe itself (a socket call failing, ctx ending) is an error: a
// refusal, an ICMP error or silence is a Result.
func (p *Probe) Send(ctx context.Context) (Result, error) {
	defer p.Close()
	if p.fd < 0 && p.icmp == nil {
		return Result{}, errors.New("sending a probe that was already sent or closed")
	}
	deadline := time.Now().Add(p.spec.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var (
		r   Result
		err error
	)
	switch p.spec.Kind {
	case TCP:
		r, err = p.sendTCP(ctx, deadline)
	case UDP, DNS:
		r, err = p.sendUDP(ctx, deadline)
	case ICMP:
		r, err = p.sendICMP(ctx, deadline)
	}
	if err != nil {
		return Result{}, fmt.Errorf("sending %s probe %s: %w", p.spec.Kind, p.flow, err)
	}
	r.Flow = p.flow
	return r, nil
}

// deadlineSetter is a socket whose blocking calls a deadline can cut short.
type deadlineSetter interface {
	SetDeadline(time.Time) error
}

// waitUntil sets the socket's deadline and cuts it short when ctx ends. Call
// the returned function when done waiting.
func waitUntil(ctx context.Context, s deadlineSetter, deadline time.Time) (stop func() bool, err error) {
	if err := s.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("setting socket deadline: %w", err)
	}
	return context.AfterFunc(ctx, func() { s.SetDeadline(time.Now()) }), nil
}

// timedOut reports whether err is a deadline passing, and if ctx ended,
// returns its error instead.
func timedOut(ctx context.Context, err error) (bool, error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	return true, ctx.Err()
}

// silence is the Result of a probe sent at sent that nothing answered.
func (p *Probe) silence(sent time.Time) Result {
	return Result{Answer: NoAnswer, Sent: sent, Reply: fmt.Sprintf("nothing within %s", p.spec.Timeout)}
}

// unsendable turns the source netns refusing to send the probe (no route, an
// OUTPUT rule dropping it) into a Result: nothing left, so nothing came back.
func unsendable(err error, sent time.Time) (Result, bool) {
	for _, errno := range []unix.Errno{unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EPERM, unix.EACCES} {
		if errors.Is(err, errno) {
			return Result{Answer: Unreachable, Reply: "not sent: " + errno.Error(), Sent: sent}, true
		}
	}
	return Result{}, false
}
