package correlate

import (
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// nftStatements are the words of an nft rule that say what it does with
// the packet.
var nftStatements = map[string]bool{
	"accept": true, "drop": true, "reject": true, "queue": true, "return": true, "continue": true,
	"dnat": true, "snat": true, "masquerade": true, "redirect": true, "jump": true, "goto": true,
}

// Target names what a rule hop did with the packet, in iptables' words:
// the target of an iptables rule as iptables-save prints it ("DNAT",
// "MASQUERADE", "REJECT", or the chain it jumps to), the last verdict or NAT
// statement of an nft rule in capitals ("DNAT" for "dnat to …", the chain
// for "jump …"), the policy of a chain ("DROP"), or "RETURN" at the end of
// a chain. It is "" for a rule that only matched.
func Target(r *trace.Rule) string {
	switch r.Type {
	case "policy":
		return strings.ToUpper(r.Verdict)
	case "return":
		return "RETURN"
	}
	words := ruleset.SplitRule(r.Text)
	if len(words) > 0 && words[0] == "-A" {
		for i := 0; i+1 < len(words); i++ {
			switch words[i] {
			case "-j", "--jump", "-g", "--goto":
				return words[i+1]
			}
		}
		return ""
	}
	target := ""
	for i := 0; i < len(words); i++ {
		switch w := words[i]; {
		case w == "comment":
			i++ // the comment's text says nothing
		case (w == "jump" || w == "goto") && i+1 < len(words):
			target = words[i+1]
			i++
		case nftStatements[w]:
			target = strings.ToUpper(w)
		}
	}
	if target == "" && r.Text == "" && r.Verdict != "" {
		verdict, chain, isJump := strings.Cut(r.Verdict, " ")
		if isJump {
			return chain
		}
		return strings.ToUpper(verdict)
	}
	return target
}

// Comment returns a rule's comment: the text of iptables'
// `-m comment --comment` or of nft's `comment`, or "".
func Comment(r *trace.Rule) string {
	words := ruleset.SplitRule(r.Text)
	keyword := "comment"
	if len(words) > 0 && words[0] == "-A" {
		keyword = "--comment"
	}
	for i := 0; i+1 < len(words); i++ {
		if words[i] == keyword {
			return words[i+1]
		}
	}
	return ""
}

// stops reports whether a rule hop ended the packet's way: a DROP or
// REJECT rule, or a chain whose policy drops.
func stops(r *trace.Rule) bool {
	switch Target(r) {
	case "DROP", "REJECT":
		return true
	}
	return r.Verdict == "drop"
}
