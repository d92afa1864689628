package route

import (
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// format writes a route the way `ip route` prints it: the entry's type,
// prefix, protocol, scope and metric, with the gateway, device, source and
// flags of r.
func format(entry netlink.Route, r trace.Route) string {
	var words []string
	if entry.Type != unix.RTN_UNICAST {
		words = append(words, r.Type)
	}
	switch {
	case r.Dst.Bits() == 0:
		words = append(words, "default")
	case r.Dst.IsSingleIP():
		words = append(words, r.Dst.Addr().String())
	default:
		words = append(words, r.Dst.String())
	}
	if r.Gateway.IsValid() {
		words = append(words, "via", r.Gateway.String())
	}
	if r.Dev != "" {
		words = append(words, "dev", r.Dev)
	}
	if r.Table != unix.RT_TABLE_MAIN && r.Table != unix.RT_TABLE_UNSPEC {
		words = append(words, "table", tableName(r.Table))
	}
	if entry.Protocol != unix.RTPROT_BOOT {
		words = append(words, "proto", entry.Protocol.String())
	}
	if entry.Scope != netlink.SCOPE_UNIVERSE {
		words = append(words, "scope", scopeName(entry.Scope))
	}
	if r.PrefSrc.IsValid() {
		words = append(words, "src", r.PrefSrc.String())
	}
	if entry.Priority != 0 {
		words = append(words, "metric", strconv.Itoa(entry.Priority))
	}
	if r.Onlink {
		words = append(words, "onlink")
	}
	return strings.Join(words, " ")
}

// typeName names a route type as iproute2 does.
func typeName(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_NAT:
		return "nat"
	case unix.RTN_XRESOLVE:
		return "xresolve"
	}
	return strconv.Itoa(t)
}

// tableName names the reserved tables as iproute2 does.
func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_LOCAL:
		return "local"
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	}
	return strconv.Itoa(t)
}

// scopeName names a route scope as iproute2 does ("global", not "universe").
func scopeName(s netlink.Scope) string {
	switch s {
	case netlink.SCOPE_UNIVERSE:
		return "global"
	case netlink.SCOPE_SITE, netlink.SCOPE_LINK, netlink.SCOPE_HOST, netlink.SCOPE_NOWHERE:
		return s.String()
	}
	return strconv.Itoa(int(s))
}
