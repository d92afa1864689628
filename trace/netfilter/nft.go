package netfilter

import (
	"fmt"
	"slices"
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

// nftArmScript returns the nft input that arms a session: a table of its
// own, tagged in its comment, whose prerouting and output chains send the
// traced flow's packets to a rate-limited rule that sets nftrace.
func nftArmScript(s Session, m trace.Match, rate, burst int) string {
	var selectors []string
	switch m.Proto {
	case trace.TCP, trace.UDP:
		selectors = []string{
			fmt.Sprintf("meta l4proto %s th dport %d", m.Proto, m.Port),
			fmt.Sprintf("meta l4proto %s th sport %d", m.Proto, m.Port),
		}
	case trace.ICMP:
		addrs := make([]string, len(m.Addrs))
		for i, a := range m.Addrs {
			addrs[i] = a.String()
		}
		set := "{ " + strings.Join(addrs, ", ") + " }"
		selectors = []string{
			"meta l4proto icmp ip saddr " + set,
			"meta l4proto icmp ip daddr " + set,
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "table ip %s {\n\tcomment %q\n", s.nftTable(), s.Tag())
	for _, hook := range []string{"prerouting", "output"} {
		fmt.Fprintf(&sb, "\tchain %s {\n\t\ttype filter hook %s priority %d; policy accept;\n", hook, hook, nftMarkPriority)
		for _, sel := range selectors {
			fmt.Fprintf(&sb, "\t\t%s jump set_nftrace\n", sel)
		}
		sb.WriteString("\t}\n")
	}
	fmt.Fprintf(&sb, "\tchain set_nftrace {\n\t\tlimit rate %d/second burst %d packets meta nftrace set 1\n\t}\n}\n", rate, burst)
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
