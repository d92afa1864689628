// Package ruleset reads netfilter rulesets as iptables-save and `nft -a list
// ruleset` print them, and finds the rule that a trace event names: the n-th
// rule of an iptables chain, or the rule with a given nf_tables handle.
package ruleset

import (
	"bufio"
	"fmt"
	"strings"
)

// Save is an iptables-save dump: tables by name.
type Save struct {
	Tables map[string]*Table
}

// Table is one table of an iptables-save dump.
type Table struct {
	Name string
	// Chains holds the chains by name, ChainOrder their names in dump order.
	Chains     map[string]*Chain
	ChainOrder []string
}

// Chain is one chain of an iptables-save dump.
type Chain struct {
	Name string
	// Policy is the policy of a built-in chain ("ACCEPT", "DROP"), empty for
	// a user-defined chain.
	Policy string
	// Rules are the chain's rules as iptables-save prints them ("-A CHAIN …"),
	// in order: Rules[n-1] is rule number n.
	Rules []string
}

// ParseSave parses the output of iptables-save (legacy or nft flavour).
// Comment lines, such as iptables-nft-save's note about a table it cannot
// print, are skipped.
func ParseSave(dump string) (*Save, error) {
	s := &Save{Tables: map[string]*Table{}}
	var table *Table
	sc := bufio.NewScanner(strings.NewReader(dump))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = &Table{Name: line[1:], Chains: map[string]*Chain{}}
			s.Tables[table.Name] = table
		case line == "COMMIT":
			table = nil
		case table == nil:
			return nil, fmt.Errorf("line %d: %q outside a table", lineNo, line)
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) < 2 {
				return nil, fmt.Errorf("line %d: malformed chain declaration %q", lineNo, line)
			}
			c := table.chain(fields[0])
			if fields[1] != "-" {
				c.Policy = fields[1]
			}
		case strings.HasPrefix(line, "-A "):
			fields := strings.Fields(line)
			if len(fields) < 2 {
				return nil, fmt.Errorf("line %d: rule without a chain", lineNo)
			}
			c := table.chain(fields[1])
			c.Rules = append(c.Rules, line)
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", lineNo, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	return s, nil
}

// chain returns the chain called name, adding it when the dump mentions it
// for the first time.
func (t *Table) chain(name string) *Chain {
	if c, ok := t.Chains[name]; ok {
		return c
	}
	c := &Chain{Name: name}
	t.Chains[name] = c
	t.ChainOrder = append(t.ChainOrder, name)
	return c
}

// Chain returns the chain of a table, or nil.
func (s *Save) Chain(table, chain string) *Chain {
	if s == nil {
		return nil
	}
	t, ok := s.Tables[table]
	if !ok {
		return nil
	}
	return t.Chains[chain]
}

// SplitRule splits a rule as iptables-save prints it into its words,
// removing the double quotes around a word with spaces and the backslashes
// that escape a quote inside it.
func SplitRule(rule string) []string {
	var (
		words   []string
		word    strings.Builder
		inWord  bool
		inQuote bool
	)
	for i := 0; i < len(rule); i++ {
		c := rule[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(rule):
			i++
			word.WriteByte(rule[i])
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case (c == ' ' || c == '\t') && !inQuote:
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, word.String())
	}
	return words
}

// Comment returns the text of the rule's first `-m comment --comment`, or "".
func Comment(rule string) string {
	words := SplitRule(rule)
	for i := 0; i+1 < len(words); i++ {
		if words[i] == "--comment" {
			return words[i+1]
		}
	}
	return ""
}

// Verdict is what a legacy rule's target does to a packet that matched it,
// in the words nf_tables traces use: "accept", "drop", "return", "queue",
// "jump CHAIN", "goto CHAIN", or "continue" for a rule without a target or
// with a target that lets the packet go on (MARK, LOG, TRACE …). REJECT is
// "drop", as the kernel sees it; the rule text still says REJECT.
func (t *Table) Verdict(rule string) string {
	words := SplitRule(rule)
	for i := 0; i+1 < len(words); i++ {
		switch words[i] {
		case "-g", "--goto":
			return "goto " + words[i+1]
		case "-j", "--jump":
			target := words[i+1]
			if _, ok := t.Chains[target]; ok {
				return "jump " + target
			}
			if v, ok := terminalTargets[target]; ok {
				return v
			}
			return "continue"
		}
	}
	return "continue"
}

// terminalTargets are the iptables targets that end the packet's walk of the
// table, with the verdict the kernel gives for them.
var terminalTargets = map[string]string{
	"ACCEPT":     "accept",
	"DROP":       "drop",
	"REJECT":     "drop",
	"RETURN":     "return",
	"QUEUE":      "queue",
	"NFQUEUE":    "queue",
	"DNAT":       "accept",
	"SNAT":       "accept",
	"MASQUERADE": "accept",
	"REDIRECT":   "accept",
	"NETMAP":     "accept",
	"TPROXY":     "accept",
}
