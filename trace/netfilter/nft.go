package netfilter

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// nftMarkPriority is the priority of a session's base chains: before the raw
// tables (-300) and conntrack (-200), so that the whole of every other
// table's walk is traced.
const nftMarkPriority = -350

// nftFamiliesForIPv4 are the families whose tables IPv4 packets can meet.
var nftFamiliesForIPv4 = map[string]bool{"ip": true, "inet": true, "bridge": true, "netdev": true}

// nftHooks are the hooks of a session's base chains, named after them.
var nftHooks = []string{"prerouting", "output"}

// nftSet is one of the sets of a session's table: what the match holds of
// one kind, and the selectors of the rules that look packets up in it.
// first says its rules go before the skip rules (nftSkipRules), since
// they select packets whatever their ports.
type nftSet struct {
	name, typ string
	selectors []string
	first     bool
}

// nftPortsSet holds every port the match names, its ports and those of its
// ends: a packet with neither port in it cannot be selected by a port or
// an end, and skips their rules.
const nftPortsSet = "anyport"

// nftSets are the sets of a session's table for a protocol: for TCP and
// UDP the ports (as source or destination), the ends and the addresses of
// ends with port 0; for ICMP the addresses.
func nftSets(proto trace.Proto) []nftSet {
	if proto == trace.ICMP {
		return []nftSet{{"addrs", "ipv4_addr", []string{"meta l4proto icmp ip saddr @addrs", "meta l4proto icmp ip daddr @addrs"}, true}}
	}
	l4 := "meta l4proto " + string(proto)
	return []nftSet{
		{"addrs", "ipv4_addr", []string{l4 + " ip daddr @addrs", l4 + " ip saddr @addrs"}, true},
		{nftPortsSet, "inet_service", nil, false},
		{"ports", "inet_service", []string{l4 + " th dport @ports", l4 + " th sport @ports"}, false},
		{"ends", "ipv4_addr . inet_service", []string{l4 + " ip daddr . th dport @ends", l4 + " ip saddr . th sport @ends"}, false},
	}
}

// nftSkipRules are the rules that end the walk of a session's chain for
// the packets that nothing after them can select: those of another
// protocol, and those with neither port in nftPortsSet. An untraced packet
// then costs the chain a comparison and two bitmap lookups instead of
// every marking rule. The rules of the sets marked first come between the
// two.
func nftSkipRules(proto trace.Proto) (protocol, ports string) {
	protocol = fmt.Sprintf("meta l4proto != %s accept", proto)
	if proto == trace.ICMP {
		return protocol, ""
	}
	return protocol, fmt.Sprintf("meta l4proto %s th dport != @%s th sport != @%s accept", proto, nftPortsSet, nftPortsSet)
}

// elements returns what m holds for the set, as nft writes its elements.
func (set nftSet) elements(m trace.Match) []string {
	var out []string
	switch {
	case m.Proto == trace.ICMP:
		for _, a := range m.Addrs {
			out = append(out, a.String())
		}
	case set.name == "ports":
		for _, p := range m.Ports {
			out = append(out, strconv.Itoa(int(p)))
		}
	case set.name == nftPortsSet:
		for _, p := range portsNamed(m) {
			out = append(out, strconv.Itoa(int(p)))
		}
	default:
		for _, e := range m.Ends {
			switch {
			case set.name == "ends" && e.Port() != 0:
				out = append(out, fmt.Sprintf("%s . %d", e.Addr(), e.Port()))
			case set.name == "addrs" && e.Port() == 0:
				out = append(out, e.Addr().String())
			}
		}
	}
	return out
}

// nftMarkRule is a rule that sets nftrace on the packets sel selects, at
// most rate a second.
func nftMarkRule(sel string, rate, burst int) string {
	return fmt.Sprintf("%s limit rate %d/second burst %d packets meta nftrace set 1", sel, rate, burst)
}

// nftArmScript returns the nft input that arms a session: a table of its
// own, tagged in its comment, holding the match in sets, whose prerouting
// and output chains set nftrace on the packets that a set selects, each
// rule limited to rate packets a second, after the skip rules that let
// the packets no rule can select through at once. A set that is empty has
// no rules yet: nftWidenScript adds them with its first elements.
func nftArmScript(s Session, m trace.Match, rate, burst int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "table ip %s {\n\tcomment %q\n", s.nftTable(), s.Tag())
	sets := nftSets(m.Proto)
	for _, set := range sets {
		fmt.Fprintf(&sb, "\tset %s {\n\t\ttype %s\n", set.name, set.typ)
		if elements := set.elements(m); len(elements) > 0 {
			fmt.Fprintf(&sb, "\t\telements = { %s }\n", strings.Join(elements, ", "))
		}
		sb.WriteString("\t}\n")
	}
	skipProtocol, skipPorts := nftSkipRules(m.Proto)
	for _, hook := range nftHooks {
		fmt.Fprintf(&sb, "\tchain %s {\n\t\ttype filter hook %s priority %d; policy accept;\n", hook, hook, nftMarkPriority)
		fmt.Fprintf(&sb, "\t\t%s\n", skipProtocol)
		for _, first := range []bool{true, false} {
			if !first && skipPorts != "" {
				fmt.Fprintf(&sb, "\t\t%s\n", skipPorts)
			}
			for _, set := range sets {
				if set.first != first || len(set.elements(m)) == 0 {
					continue
				}
				for _, sel := range set.selectors {
					fmt.Fprintf(&sb, "\t\t%s\n", nftMarkRule(sel, rate, burst))
				}
			}
		}
		sb.WriteString("\t}\n")
	}
	sb.WriteString("}\n")
	return sb.String()
}

// nftWidenScript returns the nft input that widens a session's table from
// match from to match to: the elements to adds to each set and, for a set
// that was empty, its rules, at the end of the chain or, for a set whose
// rules go before the skip rules, at its start. It returns "" when to adds
// nothing.
func nftWidenScript(s Session, from, to trace.Match, rate, burst int) string {
	var sb strings.Builder
	for _, set := range nftSets(to.Proto) {
		had := set.elements(from)
		var added []string
		for _, e := range set.elements(to) {
			if !slices.Contains(had, e) && !slices.Contains(added, e) {
				added = append(added, e)
			}
		}
		if len(added) == 0 {
			continue
		}
		fmt.Fprintf(&sb, "add element ip %s %s { %s }\n", s.nftTable(), set.name, strings.Join(added, ", "))
		if len(had) > 0 {
			continue
		}
		command := "add"
		if set.first {
			command = "insert"
		}
		for _, hook := range nftHooks {
			for _, sel := range set.selectors {
				fmt.Fprintf(&sb, "%s rule ip %s %s %s\n", command, s.nftTable(), hook, nftMarkRule(sel, rate, burst))
			}
		}
	}
	return sb.String()
}

// nftTableRef names an nf_tables table.
type nftTableRef struct {
	family, name string
}

// listNftTables lists the namespace's nf_tables tables. A node without the
// nft command has none that nettrace could read.
func listNftTables(h *netnsHandle) ([]nftTableRef, error) {
	out, err := h.run("", "nft", "list", "tables")
	if err != nil {
		return nil, fmt.Errorf("listing nf_tables tables: %w", err)
	}
	var tables []nftTableRef
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 3 && fields[0] == "table" {
			tables = append(tables, nftTableRef{family: fields[1], name: fields[2]})
		}
	}
	return tables, nil
}

// nftHasRules reports whether tables other than nettrace's that IPv4 packets
// meet exist.
func nftHasRules(tables []nftTableRef) bool {
	for _, t := range tables {
		if nftFamiliesForIPv4[t.family] && !strings.HasPrefix(t.name, nftTablePrefix) {
			return true
		}
	}
	return false
}

// nftSessions finds the sessions that left tables: by the tag in the
// table's comment, or by the table's name alone when the comment is missing.
func nftSessions(h *netnsHandle, tables []nftTableRef) (map[string]Session, map[string]nftTableRef, error) {
	sessions := map[string]Session{}
	refs := map[string]nftTableRef{}
	for _, t := range tables {
		id, ok := strings.CutPrefix(t.name, nftTablePrefix)
		if !ok || !validID(id) {
			continue
		}
		out, err := h.run("", "nft", "list", "table", t.family, t.name)
		if err != nil {
			return nil, nil, fmt.Errorf("reading table %s %s: %w", t.family, t.name, err)
		}
		listing, err := ruleset.ParseNft(string(out))
		if err != nil {
			return nil, nil, fmt.Errorf("parsing table %s %s: %w", t.family, t.name, err)
		}
		s := Session{ID: id}
		if lt := listing.Table(t.family, t.name); lt != nil {
			if tagged, ok := parseTag(lt.Comment); ok && tagged.ID == id {
				s = tagged
			}
		}
		sessions[id], refs[id] = s, t
	}
	return sessions, refs, nil
}

// removeNftSession deletes the table of a session, if it is still there:
// CleanupAll may have removed it already.
func removeNftSession(h *netnsHandle, s Session) error {
	tables, err := listNftTables(h)
	if err != nil {
		return err
	}
	ref := nftTableRef{family: "ip", name: s.nftTable()}
	if !slices.Contains(tables, ref) {
		return nil
	}
	return deleteNftTable(h, ref)
}

// deleteNftTable deletes one of nettrace's tables.
func deleteNftTable(h *netnsHandle, t nftTableRef) error {
	if _, err := h.run("", "nft", "delete", "table", t.family, t.name); err != nil {
		return fmt.Errorf("removing nftrace table: %w", err)
	}
	return nil
}
