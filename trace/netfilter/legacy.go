package netfilter

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// The iptables-legacy commands. The restore runs with --noflush, so that it
// changes only the lines it is given, and waits for the xtables lock, so
// that a concurrent kube-proxy iptables-restore loses nobody's rules.
var (
	legacySave    = []string{"iptables-legacy-save"}
	legacyRestore = []string{"iptables-legacy-restore", "--noflush", "--wait=30"}
)

// legacyHooks are the raw chains a session's jump rule goes into.
var legacyHooks = []string{"PREROUTING", "OUTPUT"}

// multiportMax is the most ports one multiport match takes.
const multiportMax = 15

// legacyArmScript returns the iptables-restore input that arms a session:
// its own chain in the raw table, reached by one jump rule at the top of
// PREROUTING and OUTPUT that carries the session tag and selects the
// traced protocol, holding first the skip rule (legacySkip), then a
// rate-limited TRACE rule for each selector of the match
// (legacyTraceRules).
func legacyArmScript(s Session, m trace.Match, rate, burst int) string {
	chain := s.legacyChain()
	var sb strings.Builder
	sb.WriteString("*raw\n")
	fmt.Fprintf(&sb, ":%s - [0:0]\n", chain)
	for _, hook := range legacyHooks {
		fmt.Fprintf(&sb, "-I %s 1 -p %s -m comment --comment %s -j %s\n", hook, m.Proto, s.Tag(), chain)
	}
	if skip := legacySkip(m); skip != "" {
		fmt.Fprintf(&sb, "-A %s %s\n", chain, skip)
	}
	sb.WriteString(legacyTraceRules(chain, m, rate, burst))
	sb.WriteString("COMMIT\n")
	return sb.String()
}

// legacySkip returns the first rule of a session's chain, without the
// chain: a RETURN for the TCP or UDP packets with neither port among
// those the match names (its ports and those of its ends), which then
// meet no other rule of the chain. Ports beyond what one multiport match
// takes go into further negated multiport matches of the same rule, which
// a packet must all pass. It returns "" when the match selects by address
// alone (ICMP, or an end without a port), or names no port.
func legacySkip(m trace.Match) string {
	if m.Proto == trace.ICMP {
		return ""
	}
	if slices.ContainsFunc(m.Ends, func(e netip.AddrPort) bool { return e.Port() == 0 }) {
		return ""
	}
	ports := portsNamed(m)
	if len(ports) == 0 {
		return ""
	}
	rule := "-p " + string(m.Proto)
	for chunk := range slices.Chunk(ports, multiportMax) {
		rule += " -m multiport ! --ports " + portList(chunk)
	}
	return rule + " -j RETURN"
}

// portList returns ports as a multiport match writes them.
func portList(ports []uint16) string {
	list := make([]string, len(ports))
	for i, p := range ports {
		list[i] = strconv.Itoa(int(p))
	}
	return strings.Join(list, ",")
}

// legacyWidenScript returns the iptables-restore input that widens a
// session's chain from match from to match to: the skip rule replaced,
// added or deleted as to needs, and the TRACE rules of what to adds.
func legacyWidenScript(s Session, from, to trace.Match, rate, burst int) string {
	chain := s.legacyChain()
	var sb strings.Builder
	sb.WriteString("*raw\n")
	switch before, after := legacySkip(from), legacySkip(to); {
	case before == after:
	case after == "":
		fmt.Fprintf(&sb, "-D %s 1\n", chain)
	case before == "":
		// from named no port and no address-only end: no rule of the chain
		// needs to come first.
		fmt.Fprintf(&sb, "-I %s 1 %s\n", chain, after)
	default:
		fmt.Fprintf(&sb, "-R %s 1 %s\n", chain, after)
	}
	sb.WriteString(legacyTraceRules(chain, lacking(from, to), rate, burst))
	sb.WriteString("COMMIT\n")
	return sb.String()
}

// legacyTraceRules returns the rules of a session's chain that TRACE what m
// selects, each limited to rate packets a second: for TCP and UDP the
// ports, at most 15 to a multiport rule that matches them as source or
// destination, and each end as source and as destination; for ICMP each
// address as source and as destination.
func legacyTraceRules(chain string, m trace.Match, rate, burst int) string {
	var selectors []string
	proto := string(m.Proto)
	if m.Proto == trace.ICMP {
		for _, a := range m.Addrs {
			selectors = append(selectors, fmt.Sprintf("-s %s/32 -p icmp", a), fmt.Sprintf("-d %s/32 -p icmp", a))
		}
		m.Ports, m.Ends = nil, nil
	}
	for ports := range slices.Chunk(m.Ports, multiportMax) {
		selectors = append(selectors, fmt.Sprintf("-p %s -m multiport --ports %s", proto, portList(ports)))
	}
	for _, e := range m.Ends {
		if e.Port() == 0 {
			selectors = append(selectors, fmt.Sprintf("-s %s/32 -p %s", e.Addr(), proto), fmt.Sprintf("-d %s/32 -p %s", e.Addr(), proto))
			continue
		}
		selectors = append(selectors,
			fmt.Sprintf("-s %s/32 -p %s -m %s --sport %d", e.Addr(), proto, proto, e.Port()),
			fmt.Sprintf("-d %s/32 -p %s -m %s --dport %d", e.Addr(), proto, proto, e.Port()))
	}
	var sb strings.Builder
	for _, sel := range selectors {
		fmt.Fprintf(&sb, "-A %s %s -m limit --limit %d/second --limit-burst %d -j TRACE\n", chain, sel, rate, burst)
	}
	return sb.String()
}

// legacySessions finds the sessions that left rules in an
// iptables-legacy-save dump: by the tag on their jump rules, and by the name
// of their chains, so that a chain whose jumps are gone is found too.
func legacySessions(save *ruleset.Save) map[string]Session {
	found := map[string]Session{}
	for _, t := range save.Tables {
		for _, name := range t.ChainOrder {
			if id, ok := strings.CutPrefix(name, legacyChainPrefix); ok && validID(id) {
				if _, seen := found[id]; !seen {
					found[id] = Session{ID: id}
				}
			}
			for _, rule := range t.Chains[name].Rules {
				if s, ok := parseTag(ruleset.Comment(rule)); ok {
					found[s.ID] = s
				}
			}
		}
	}
	return found
}

// legacyDisarmScript returns the iptables-restore input that removes what
// the sessions with the given ids added: their tagged rules, deleted by
// their exact text, then their chains. It returns "" when there is nothing.
func legacyDisarmScript(save *ruleset.Save, ids map[string]bool) string {
	var sb strings.Builder
	tables := make([]string, 0, len(save.Tables))
	for name := range save.Tables {
		tables = append(tables, name)
	}
	slices.Sort(tables)
	for _, name := range tables {
		t := save.Tables[name]
		var deletes, chains []string
		for _, chain := range t.ChainOrder {
			for _, rule := range t.Chains[chain].Rules {
				if s, ok := parseTag(ruleset.Comment(rule)); ok && ids[s.ID] {
					deletes = append(deletes, "-D"+strings.TrimPrefix(rule, "-A"))
				}
			}
			if id, ok := strings.CutPrefix(chain, legacyChainPrefix); ok && ids[id] {
				chains = append(chains, chain)
			}
		}
		if len(deletes) == 0 && len(chains) == 0 {
			continue
		}
		fmt.Fprintf(&sb, "*%s\n", name)
		for _, d := range deletes {
			sb.WriteString(d + "\n")
		}
		for _, c := range chains {
			fmt.Fprintf(&sb, "-F %s\n-X %s\n", c, c)
		}
		sb.WriteString("COMMIT\n")
	}
	return sb.String()
}

// legacyHasRules reports whether an iptables-legacy-save dump holds rules
// other than nettrace's: a rule, a user chain, or a built-in chain whose
// policy is not ACCEPT.
func legacyHasRules(save *ruleset.Save) bool {
	for _, t := range save.Tables {
		for _, c := range t.Chains {
			if strings.HasPrefix(c.Name, legacyChainPrefix) {
				continue
			}
			if c.Policy != "ACCEPT" { // a user chain, or a policy that filters
				return true
			}
			for _, rule := range c.Rules {
				if !strings.HasPrefix(ruleset.Comment(rule), tagPrefix) {
					return true
				}
			}
		}
	}
	return false
}

// readLegacy reads iptables-legacy-save in the namespace.
func readLegacy(h *netnsHandle) (*ruleset.Save, error) {
	out, err := h.run("", legacySave[0], legacySave[1:]...)
	if err != nil {
		return nil, err
	}
	save, err := ruleset.ParseSave(string(out))
	if err != nil {
		return nil, fmt.Errorf("parsing iptables-legacy-save: %w", err)
	}
	return save, nil
}

// removeLegacySessions removes the legacy rules and chains of the sessions
// with the given ids.
func removeLegacySessions(h *netnsHandle, ids map[string]bool) error {
	save, err := readLegacy(h)
	if err != nil {
		return err
	}
	script := legacyDisarmScript(save, ids)
	if script == "" {
		return nil
	}
	if _, err := h.run(script, legacyRestore[0], legacyRestore[1:]...); err != nil {
		return fmt.Errorf("removing legacy trace rules: %w", err)
	}
	return nil
}
