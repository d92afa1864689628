package engine

import (
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// maxPlannedEnds bounds the DNAT destinations a trace arms with; a
// destination with more endpoints is followed by widening alone.
const maxPlannedEnds = 32

// plannedEnds returns, for a flow about to be traced in the calling
// thread's network namespace, where the node's NAT rules may DNAT its
// request: dnatTargets over the nat table of both iptables backends, and
// nftDNATTargets over the native nf_tables tables (kube-proxy's nftables
// mode). Armed
// with them, the sources select the request from the first packet after a
// DNAT that also rewrites its source (a node port of the node itself, whose
// MASQUERADE picks a random port), which widening would see only after it
// went by. A backend that cannot be read adds nothing.
func plannedEnds(flow trace.Flow) []netip.AddrPort {
	if flow.Proto == trace.ICMP {
		return nil
	}
	var saves []*ruleset.Save
	// Whole dumps: naming a table (-t nat) would make it, on either
	// backend, where it does not exist.
	for _, cmd := range []string{"iptables-legacy-save", "iptables-nft-save"} {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			continue
		}
		if save, err := ruleset.ParseSave(string(out)); err == nil {
			saves = append(saves, save)
		}
	}
	dst, local := netip.AddrPortFrom(flow.Dst, flow.DstPort), isLocalAddr(flow.Dst)
	var found []netip.AddrPort
	for _, save := range saves {
		found = append(found, dnatTargets(save, flow.Proto, dst, local)...)
	}
	if listing, err := exec.Command("nft", "-j", "list", "ruleset").Output(); err == nil {
		if targets, err := nftDNATTargets(listing, flow.Proto, dst, local); err == nil {
			found = append(found, targets...)
		}
	}
	var ends []netip.AddrPort
	for _, e := range found {
		if !slices.Contains(ends, e) && e != dst {
			ends = append(ends, e)
		}
	}
	if len(ends) > maxPlannedEnds {
		return nil
	}
	return ends
}

// isLocalAddr reports whether the calling thread's network namespace
// routes a to itself: the FIB's answer, which iptables' `--dst-type LOCAL`
// and nftables' `fib daddr type local` ask for too.
func isLocalAddr(a netip.Addr) bool {
	r, err := route.Lookup(route.Query{Dst: a})
	return err == nil && r.Type == "local"
}

// dnatTargets walks the nat table of an iptables-save dump from PREROUTING
// and OUTPUT, as a packet of proto to dst would go, and returns the
// destinations of the DNAT rules it reaches. A rule is taken to match
// unless a selector the walk reads rules the packet out (-p, -d, --dport,
// --dports, --dst-type LOCAL, each possibly negated); every other selector
// is taken to match, so the result holds every DNAT the packet may meet,
// and perhaps more: kube-proxy's endpoint chains are all reached, whatever
// their probabilities. local says whether dst is an address of the node.
func dnatTargets(save *ruleset.Save, proto trace.Proto, dst netip.AddrPort, local bool) []netip.AddrPort {
	nat := save.Tables["nat"]
	if nat == nil {
		return nil
	}
	w := dnatWalk{table: nat, proto: string(proto), dst: dst, local: local, seen: map[string]bool{}}
	w.chain("PREROUTING")
	w.chain("OUTPUT")
	return w.targets
}

// dnatWalk is one walk of dnatTargets.
type dnatWalk struct {
	table   *ruleset.Table
	proto   string
	dst     netip.AddrPort
	local   bool
	seen    map[string]bool // chains walked already: their targets are in
	targets []netip.AddrPort
}

func (w *dnatWalk) chain(name string) {
	c := w.table.Chains[name]
	if c == nil || w.seen[name] {
		return
	}
	w.seen[name] = true
	for _, rule := range c.Rules {
		r := parseNATRule(rule)
		if !r.mayMatch(w.proto, w.dst, w.local) {
			continue
		}
		switch {
		case r.target == "DNAT":
			if to, ok := r.toDestination(w.dst.Port()); ok && !slices.Contains(w.targets, to) {
				w.targets = append(w.targets, to)
			}
		case w.table.Chains[r.target] != nil:
			w.chain(r.target)
		}
	}
}

// natRule is what dnatTargets reads of a rule.
type natRule struct {
	// selectors maps the options read to their value and whether "!"
	// negates them.
	selectors map[string]selector
	target    string
	to        string // --to-destination
}

type selector struct {
	value  string
	negate bool
}

// parseNATRule reads a rule as iptables-save prints it ("-A CHAIN …").
func parseNATRule(rule string) natRule {
	r := natRule{selectors: map[string]selector{}}
	fields := ruleset.SplitRule(rule)
	negate := false
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		var value string
		if i+1 < len(fields) {
			value = fields[i+1]
		}
		switch f {
		case "!":
			negate = true
			continue
		case "-p", "--protocol", "-d", "--destination", "--dport", "--destination-port", "--dports", "--dst-type":
			r.selectors[f] = selector{value: value, negate: negate}
			i++
		case "-j", "--jump", "-g", "--goto":
			r.target = value
			i++
		case "--to-destination":
			r.to = value
			i++
		}
		negate = false
	}
	return r
}

// mayMatch reports whether no selector the walk reads rules the packet out.
func (r natRule) mayMatch(proto string, dst netip.AddrPort, local bool) bool {
	for opt, s := range r.selectors {
		var hit bool
		switch opt {
		case "-p", "--protocol":
			hit = s.value == proto || s.value == "all"
		case "-d", "--destination":
			hit = prefixContains(s.value, dst.Addr())
		case "--dport", "--destination-port":
			hit = portIn(s.value, dst.Port())
		case "--dports":
			hit = slices.ContainsFunc(strings.Split(s.value, ","), func(p string) bool { return portIn(p, dst.Port()) })
		case "--dst-type":
			if !slices.Contains(strings.Split(s.value, ","), "LOCAL") {
				continue // another address type: not read
			}
			hit = local
		default:
			continue
		}
		if hit == s.negate {
			return false
		}
	}
	return true
}

// toDestination is the destination the rule's DNAT gives: its address and
// port, or its address and the packet's port when it names none. A range
// of addresses or ports is not read.
func (r natRule) toDestination(port uint16) (netip.AddrPort, bool) {
	if ap, err := netip.ParseAddrPort(r.to); err == nil {
		return ap, true
	}
	if a, err := netip.ParseAddr(r.to); err == nil {
		return netip.AddrPortFrom(a, port), true
	}
	return netip.AddrPort{}, false
}

// prefixContains reports whether a, as iptables prints it ("10.96.0.1/32"),
// contains addr.
func prefixContains(s string, addr netip.Addr) bool {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Contains(addr)
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a == addr
}

// portIn reports whether port is p or in the range "low:high".
func portIn(p string, port uint16) bool {
	low, high, isRange := strings.Cut(p, ":")
	if !isRange {
		high = low
	}
	l, err1 := strconv.Atoi(low)
	h, err2 := strconv.Atoi(high)
	return err1 == nil && err2 == nil && int(port) >= l && int(port) <= h
}
