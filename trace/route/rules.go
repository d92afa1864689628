package route

import (
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// walkRules finds the route q takes by evaluating the policy rules in
// priority order and taking the longest prefix of the first table that has
// one, as the kernel does; a throw route or a prefix the rule suppresses
// moves on to the next rule. It is used only when the kernel's own lookup
// fails, which it does for blackhole, unreachable and prohibit routes. Rules
// that select on something a Query does not carry (ports, protocol, uid,
// output interface, TOS) are taken not to match.
func walkRules(q Query) (netlink.Route, bool, error) {
	family := netlink.FAMILY_V4
	if q.Dst.Is6() {
		family = netlink.FAMILY_V6
	}
	rules, err := netlink.RuleList(family)
	if err != nil {
		return netlink.Route{}, false, fmt.Errorf("listing policy rules: %w", err)
	}
	sort.SliceStable(rules, func(i, j int) bool { return rules[i].Priority < rules[j].Priority })
	for _, rule := range rules {
		// Only table lookups carry a table; netlink does not report the
		// action of the others (goto, blackhole, ...), so they are passed over.
		if rule.Table == unix.RT_TABLE_UNSPEC || !ruleMatches(rule, q) {
			continue
		}
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: rule.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return netlink.Route{}, false, fmt.Errorf("listing routes of table %d: %w", rule.Table, err)
		}
		best, found := longestMatch(routes, q.Dst)
		if !found || best.Type == unix.RTN_THROW {
			continue
		}
		if rule.SuppressPrefixlen >= 0 && prefixOf(best).Bits() <= rule.SuppressPrefixlen {
			continue
		}
		return best, true, nil
	}
	return netlink.Route{}, false, nil
}

// ruleMatches reports whether the selectors of rule match q.
func ruleMatches(rule netlink.Rule, q Query) bool {
	if rule.Dport != nil || rule.Sport != nil || rule.IPProto != 0 || rule.UIDRange != nil ||
		rule.OifName != "" || rule.Tos != 0 {
		return false
	}
	match := contains(rule.Src, q.Src) && contains(rule.Dst, q.Dst)
	if rule.IifName != "" {
		iif := q.Iif
		if iif == "" {
			iif = "lo" // the kernel looks up locally sent packets as coming from lo
		}
		match = match && rule.IifName == iif
	}
	if rule.Mark != 0 || rule.Mask != nil {
		mask := uint32(0xffffffff)
		if rule.Mask != nil {
			mask = *rule.Mask
		}
		match = match && q.Mark&mask == rule.Mark
	}
	return match != rule.Invert
}

// contains reports whether a rule's address selector matches addr; a rule
// without one matches any address.
func contains(sel *net.IPNet, addr netip.Addr) bool {
	if sel == nil {
		return true
	}
	if ones, _ := sel.Mask.Size(); ones == 0 {
		return true
	}
	return addr.IsValid() && sel.Contains(net.IP(addr.AsSlice()))
}

// longestMatch returns the route with the longest prefix containing dst,
// the lowest metric among equals.
func longestMatch(routes []netlink.Route, dst netip.Addr) (netlink.Route, bool) {
	var best netlink.Route
	found := false
	for _, r := range routes {
		p := prefixOf(r)
		if !p.Contains(dst) {
			continue
		}
		if !found || p.Bits() > prefixOf(best).Bits() ||
			(p.Bits() == prefixOf(best).Bits() && r.Priority < best.Priority) {
			best, found = r, true
		}
	}
	return best, found
}
