package ruleset

import (
	"fmt"
	"sync"
	"time"
)

// Runner runs a command in the network namespace whose rules are read and
// returns its standard output.
type Runner func(name string, args ...string) ([]byte, error)

// Commands that print the rulesets.
var (
	legacySaveCmd = []string{"iptables-legacy-save"}
	nftSaveCmd    = []string{"iptables-nft-save"}
	nftListCmd    = []string{"nft", "--handle", "--stateless", "--terse", "list", "ruleset"}
)

// iptablesNftTables are the tables iptables-nft creates in family ip.
var iptablesNftTables = map[string]bool{"filter": true, "nat": true, "mangle": true, "raw": true, "security": true}

// Reader keeps a snapshot of the rulesets of one network namespace and looks
// the rules of trace events up in it. When a lookup misses, because a rule
// was added or moved since the snapshot (kube-proxy rewrites its chains), it
// reads the rulesets again, at most once per MinReread.
type Reader struct {
	run    Runner
	legacy bool
	nft    bool

	// MinReread is the least time between two reads of the rulesets.
	MinReread time.Duration

	mu         sync.Mutex
	lastRead   time.Time
	legacySave *Save
	nftSave    *Save
	nftList    *Nft
}

// NewReader returns a Reader of the legacy rules, the nf_tables rules, or
// both. It reads nothing until Refresh.
func NewReader(run Runner, legacy, nft bool) *Reader {
	return &Reader{run: run, legacy: legacy, nft: nft, MinReread: 250 * time.Millisecond}
}

// Refresh reads the rulesets now.
func (r *Reader) Refresh() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.readLocked()
}

func (r *Reader) readLocked() error {
	r.lastRead = time.Now()
	if r.legacy {
		s, err := r.save(legacySaveCmd)
		if err != nil {
			return err
		}
		r.legacySave = s
	}
	if r.nft {
		out, err := r.run(nftListCmd[0], nftListCmd[1:]...)
		if err != nil {
			return fmt.Errorf("listing nf_tables ruleset: %w", err)
		}
		n, err := ParseNft(string(out))
		if err != nil {
			return fmt.Errorf("parsing nf_tables ruleset: %w", err)
		}
		r.nftList = n
		r.nftSave = nil
		if n.hasIptablesNftTable() {
			s, err := r.save(nftSaveCmd)
			if err != nil {
				return err
			}
			r.nftSave = s
		}
	}
	return nil
}

func (r *Reader) save(cmd []string) (*Save, error) {
	out, err := r.run(cmd[0], cmd[1:]...)
	if err != nil {
		return nil, fmt.Errorf("running %s: %w", cmd[0], err)
	}
	s, err := ParseSave(string(out))
	if err != nil {
		return nil, fmt.Errorf("parsing %s output: %w", cmd[0], err)
	}
	return s, nil
}

// refreshOnMiss reads the rulesets again after a lookup missed, unless they
// were read less than MinReread ago. It reports whether it read them.
func (r *Reader) refreshOnMiss() bool {
	if time.Since(r.lastRead) < r.MinReread {
		return false
	}
	return r.readLocked() == nil
}

// LegacyHit is what a legacy TRACE event resolves to.
type LegacyHit struct {
	// Type is "rule", "return" or "policy". The kernel names an
	// unconditional rule with a built-in verdict (a bare "-j ACCEPT") as a
	// return or policy; such a hit is reported as the rule it is.
	Type string
	// Text is the rule as iptables-legacy-save prints it, or the policy as
	// ":CHAIN POLICY"; empty for the implicit return at a chain's end.
	Text    string
	Verdict string
}

// Legacy resolves a TRACE event of the legacy backend: table, chain, the
// type the kernel gave and the 1-based rule number (for a return or policy,
// the number of rules plus one).
func (r *Reader) Legacy(table, chain, typ string, number int) (LegacyHit, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hit, ok := resolveLegacy(r.legacySave, table, chain, typ, number)
	if !ok && r.refreshOnMiss() {
		hit, ok = resolveLegacy(r.legacySave, table, chain, typ, number)
	}
	return hit, ok
}

func resolveLegacy(s *Save, table, chain, typ string, number int) (LegacyHit, bool) {
	c := s.Chain(table, chain)
	if c == nil || number < 1 {
		return LegacyHit{}, false
	}
	t := s.Tables[table]
	switch {
	case number <= len(c.Rules):
		rule := c.Rules[number-1]
		return LegacyHit{Type: "rule", Text: rule, Verdict: t.Verdict(rule)}, true
	case number > len(c.Rules)+1:
		return LegacyHit{}, false
	case typ == "policy" && c.Policy != "":
		return LegacyHit{Type: "policy", Text: ":" + chain + " " + c.Policy, Verdict: verdictWord(c.Policy)}, true
	case typ == "return" && c.Policy == "":
		return LegacyHit{Type: "return", Verdict: "return"}, true
	}
	return LegacyHit{}, false
}

func verdictWord(policy string) string {
	if v, ok := terminalTargets[policy]; ok {
		return v
	}
	return policy
}

// NftHit is what an nf_tables trace event resolves to.
type NftHit struct {
	// Number is the rule's 1-based position in its chain.
	Number int
	// Text is the rule as iptables-nft-save prints it when the table is one
	// of iptables-nft's, else as nft prints it.
	Text string
}

// Nft resolves the rule with handle in a chain of an nf_tables table.
func (r *Reader) Nft(family, table, chain string, handle uint64) (NftHit, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hit, ok := r.resolveNft(family, table, chain, handle)
	if !ok && r.refreshOnMiss() {
		hit, ok = r.resolveNft(family, table, chain, handle)
	}
	return hit, ok
}

func (r *Reader) resolveNft(family, table, chain string, handle uint64) (NftHit, bool) {
	t := r.nftList.Table(family, table)
	if t == nil {
		return NftHit{}, false
	}
	c, ok := t.Chains[chain]
	if !ok {
		return NftHit{}, false
	}
	n := c.Position(handle)
	if n == 0 {
		return NftHit{}, false
	}
	hit := NftHit{Number: n, Text: c.Rules[n-1].Text}
	if IptablesNft(family, table) {
		// iptables-nft-save prints the rules of a chain in handle order; it
		// prints a table it cannot translate as a comment only, so a chain
		// missing from it, or with another number of rules, keeps nft's text.
		if sc := r.nftSave.Chain(table, chain); sc != nil && len(sc.Rules) == len(c.Rules) {
			hit.Text = sc.Rules[n-1]
		}
	}
	return hit, true
}

// NftBaseChain reports whether a chain is a base chain, hooked into the
// stack; false for a regular chain or one not in the snapshot.
func (r *Reader) NftBaseChain(family, table, chain string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.nftList.Table(family, table); t != nil {
		if c, ok := t.Chains[chain]; ok {
			return c.Hook != ""
		}
	}
	return false
}

// IptablesNft reports whether an nf_tables table is one that iptables-nft
// manages: family ip, named after an iptables table.
func IptablesNft(family, table string) bool {
	return family == "ip" && iptablesNftTables[table]
}

func (n *Nft) hasIptablesNftTable() bool {
	for _, t := range n.Tables {
		if IptablesNft(t.Family, t.Name) {
			return true
		}
	}
	return false
}
