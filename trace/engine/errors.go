package engine

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrInvalid is matched, with errors.Is, by every error that says the
// request itself is wrong: an address that is not a pod on the node, IPv6,
// a missing or superfluous port, an unknown protocol or namespace. Any
// other error of Trace or Start means the trace could not run.
var ErrInvalid = errors.New("invalid trace request")

// ErrIPv6 is returned, marked invalid, for a flow with an IPv6 address.
var ErrIPv6 = errors.New("IPv6 is not supported yet")

// invalidError marks an error as a fault of the request.
type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Unwrap() error        { return e.err }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

// invalidf returns an error, marked invalid, formatted as fmt.Errorf does.
func invalidf(format string, args ...any) error {
	return invalidError{fmt.Errorf(format, args...)}
}

// NotLocalPodError says that an address is not a pod on the traced node:
// the node does not route it to a pod's veth. It is invalid.
type NotLocalPodError struct {
	IP netip.Addr
	// Via is the interface the node routes IP to instead, if any.
	Via string
}

func (e *NotLocalPodError) Error() string {
	s := fmt.Sprintf("%s is not a pod on this node: no route via a cali* interface", e.IP)
	if e.Via != "" {
		s += " (the node routes it via " + e.Via + ")"
	}
	return s
}

// Is makes the error match ErrInvalid.
func (e *NotLocalPodError) Is(target error) bool { return target == ErrInvalid }
