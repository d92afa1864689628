package probe

import (
	"encoding/binary"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockExtendedErrLen is the size of struct sock_extended_err, which the
// offender's sockaddr follows in an IP_RECVERR control message.
const sockExtendedErrLen = 16

// queuedICMPError reads the ICMP error the kernel queued on a socket with
// IP_RECVERR set, if there is one. It reads without the poller, which
// refuses reads once the socket has reported EPOLLERR.
func queuedICMPError(rc syscall.RawConn) (icmpError, bool) {
	var (
		found icmpError
		ok    bool
	)
	read := func(fd uintptr) {
		data, oob := make([]byte, 256), make([]byte, 256)
		_, oobn, _, _, err := unix.Recvmsg(int(fd), data, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR {
				found, ok = parseExtendedErr(m.Data)
			}
		}
	}
	if err := rc.Control(read); err != nil {
		return icmpError{}, false
	}
	return found, ok
}

// parseExtendedErr decodes a struct sock_extended_err from ICMP and the
// sockaddr_in of the host that sent it.
func parseExtendedErr(b []byte) (icmpError, bool) {
	if len(b) < sockExtendedErrLen || b[4] != unix.SO_EE_ORIGIN_ICMP {
		return icmpError{}, false
	}
	e := icmpError{typ: b[5], code: b[6]}
	offender := b[sockExtendedErrLen:]
	if len(offender) >= 8 && binary.NativeEndian.Uint16(offender) == unix.AF_INET {
		e.from = netip.AddrFrom4([4]byte(offender[4:8]))
	}
	return e, true
}
