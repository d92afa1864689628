// Package nlsock holds the socket option that both netfilter trace readers
// set on their netlink sockets.
package nlsock

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ForceReadBuffer sets the receive buffer of c to bytes, past
// net.core.rmem_max, as root may: a trace sends bursts of events, and every
// one that does not fit is lost.
func ForceReadBuffer(c *netlink.Conn, bytes int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("getting raw netlink socket: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bytes)
	}); err != nil {
		return fmt.Errorf("setting receive buffer: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("setting receive buffer to %d bytes: %w", bytes, serr)
	}
	return nil
}
