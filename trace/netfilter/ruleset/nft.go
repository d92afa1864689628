package ruleset

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// Nft is an nf_tables ruleset as `nft --handle list ruleset` prints it.
type Nft struct {
	Tables []*NftTable
}

// NftTable is one nf_tables table.
type NftTable struct {
	// Family is the table's family as nft spells it: ip, ip6, inet, arp,
	// bridge or netdev.
	Family string
	Name   string
	// Comment is the table's comment, unquoted, or "".
	Comment    string
	Chains     map[string]*NftChain
	ChainOrder []string
}

// NftChain is one chain of a table.
type NftChain struct {
	Name string
	// Hook is the hook of a base chain ("prerouting" …), empty for a regular chain.
	Hook string
	// Policy is a base chain's policy ("accept", "drop").
	Policy string
	// Rules are the chain's rules in order.
	Rules []NftRule
}

// NftRule is one rule of a chain.
type NftRule struct {
	Handle uint64
	// Text is the rule as nft prints it, without the handle comment and with
	// runs of blanks squeezed to one.
	Text string
}

// ParseNft parses the output of `nft --handle list ruleset` (with or without
// --stateless and --terse). Sets, maps, flowtables and stateful objects are
// skipped; only tables, chains and rules are kept.
func ParseNft(listing string) (*Nft, error) {
	p := nftParser{ruleset: &Nft{}}
	sc := bufio.NewScanner(strings.NewReader(listing))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		if err := p.line(sc.Text()); err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading nft listing: %w", err)
	}
	if p.depth != 0 {
		return nil, fmt.Errorf("nft listing ends inside a block")
	}
	return p.ruleset, nil
}

// nftParser walks an nft listing line by line, keeping track of the block
// it is in. Blocks other than tables and chains (sets, maps …) are skipped
// by counting braces; a statement is collected until its braces balance, so
// that one spanning several lines is read whole.
type nftParser struct {
	ruleset *Nft
	table   *NftTable
	chain   *NftChain
	depth   int
	// skipDepth is the depth at which a skipped block started, or 0.
	skipDepth int
	// pending collects a statement whose braces do not balance yet.
	pending string
}

func (p *nftParser) line(raw string) error {
	text := strings.TrimSpace(raw)
	if p.pending != "" {
		text = p.pending + " " + text
		p.pending = ""
	}
	if text == "" {
		return nil
	}
	body, handle, hasHandle := splitHandle(text)
	opens, closes := countBraces(body)

	if p.skipDepth != 0 {
		p.depth += opens - closes
		if p.depth < p.skipDepth {
			p.skipDepth = 0
		}
		return nil
	}

	switch {
	case body == "}":
		return p.close()
	case p.depth == 0:
		return p.openTable(body, opens)
	case p.depth == 1 && strings.HasPrefix(body, "chain ") && opens == 1 && closes == 0:
		return p.openChain(body)
	case p.depth == 1 && strings.HasPrefix(body, "comment "):
		p.table.Comment = unquote(strings.TrimPrefix(body, "comment "))
		return nil
	case opens > closes && !(p.depth == 2 && p.chain != nil):
		// A set, map, flowtable or object block: skip it whole.
		p.depth += opens - closes
		p.skipDepth = p.depth
		return nil
	case p.depth == 2 && p.chain != nil:
		if opens != closes {
			p.pending = text
			return nil
		}
		return p.chainLine(body, handle, hasHandle)
	}
	return nil
}

func (p *nftParser) openTable(body string, opens int) error {
	fields := strings.Fields(body)
	if len(fields) != 4 || fields[0] != "table" || fields[3] != "{" || opens != 1 {
		return fmt.Errorf("expected a table, got %q", body)
	}
	p.table = &NftTable{Family: fields[1], Name: unquote(fields[2]), Chains: map[string]*NftChain{}}
	p.ruleset.Tables = append(p.ruleset.Tables, p.table)
	p.depth = 1
	return nil
}

func (p *nftParser) openChain(body string) error {
	fields := strings.Fields(body)
	if len(fields) != 3 || fields[2] != "{" {
		return fmt.Errorf("expected a chain, got %q", body)
	}
	p.chain = &NftChain{Name: unquote(fields[1])}
	p.table.Chains[p.chain.Name] = p.chain
	p.table.ChainOrder = append(p.table.ChainOrder, p.chain.Name)
	p.depth = 2
	return nil
}

// chainLine reads a line inside a chain: the base chain's header, the
// chain's comment, or a rule.
func (p *nftParser) chainLine(body string, handle uint64, hasHandle bool) error {
	if hasHandle {
		p.chain.Rules = append(p.chain.Rules, NftRule{Handle: handle, Text: squeeze(body)})
		return nil
	}
	if strings.HasPrefix(body, "type ") {
		for _, stmt := range strings.Split(body, ";") {
			fields := strings.Fields(stmt)
			for i := 0; i+1 < len(fields); i++ {
				switch fields[i] {
				case "hook":
					p.chain.Hook = fields[i+1]
				case "policy":
					p.chain.Policy = fields[i+1]
				}
			}
		}
	}
	return nil
}

func (p *nftParser) close() error {
	switch p.depth {
	case 0:
		return fmt.Errorf("unbalanced }")
	case 1:
		p.table = nil
	case 2:
		p.chain = nil
	}
	p.depth--
	return nil
}

// splitHandle splits "RULE # handle 12" into "RULE" and 12.
func splitHandle(text string) (body string, handle uint64, ok bool) {
	i := strings.LastIndex(text, "# handle ")
	if i < 0 || inQuotes(text[:i]) {
		return text, 0, false
	}
	h, err := strconv.ParseUint(strings.TrimSpace(text[i+len("# handle "):]), 10, 64)
	if err != nil {
		return text, 0, false
	}
	return strings.TrimSpace(text[:i]), h, true
}

// countBraces counts the braces of s that are not inside double quotes.
func countBraces(s string) (opens, closes int) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			quoted = !quoted
		case '{':
			if !quoted {
				opens++
			}
		case '}':
			if !quoted {
				closes++
			}
		}
	}
	return opens, closes
}

// inQuotes reports whether s ends inside a double-quoted string.
func inQuotes(s string) bool {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			quoted = !quoted
		}
	}
	return quoted
}

// squeeze replaces runs of blanks outside quotes with one space.
func squeeze(s string) string {
	var sb strings.Builder
	quoted, blank := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !quoted && (c == ' ' || c == '\t') {
			blank = true
			continue
		}
		if blank && sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		blank = false
		if c == '"' {
			quoted = !quoted
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `\"`, `"`)
	}
	return s
}

// Table returns the table of a family with a name, or nil.
func (n *Nft) Table(family, name string) *NftTable {
	if n == nil {
		return nil
	}
	for _, t := range n.Tables {
		if t.Family == family && t.Name == name {
			return t
		}
	}
	return nil
}

// Position returns the 1-based position of the rule with handle in c, or 0.
func (c *NftChain) Position(handle uint64) int {
	for i, r := range c.Rules {
		if r.Handle == handle {
			return i + 1
		}
	}
	return 0
}
