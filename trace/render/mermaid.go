package render

import (
	"fmt"
	"io"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// writeMermaid writes a Mermaid sequence diagram: one participant for the
// client pod, each node and the destination, and one arrow per line of the
// table, from where the packet was to where the line happened.
func writeMermaid(w io.Writer, p trace.Path) error {
	ls := lines(p)
	c := castOf(p, ls)
	var b strings.Builder
	b.WriteString("sequenceDiagram\n")
	for _, pt := range c.participants {
		fmt.Fprintf(&b, "    participant %s as %s\n", pt.id, mermaidText(pt.label))
	}
	over := c.participants[0].id
	if len(c.participants) > 1 {
		over += "," + c.participants[len(c.participants)-1].id
	}
	inReply := false
	for i, l := range ls {
		if l.first().Direction == trace.Reply && !inReply {
			inReply = true
			fmt.Fprintf(&b, "    Note over %s: reply\n", over)
		}
		arrow := "->>"
		if l.first().Direction == trace.Reply {
			arrow = "-->>"
		}
		fmt.Fprintf(&b, "    %s%s%s: %s\n", c.participants[from(c, ls, i)].id, arrow, c.participants[c.of[i]].id, mermaidText(l.text()))
	}
	fmt.Fprintf(&b, "    Note over %s: %s\n", over, mermaidText(plainText(verdictLine(p.Verdict))))
	_, err := io.WriteString(w, b.String())
	return err
}

// mermaidText escapes the characters that end or break a Mermaid message,
// with Mermaid's entity codes.
var mermaidText = strings.NewReplacer(
	"#", "#35;",
	";", "#59;",
	"<", "#lt;",
	">", "#gt;",
	"\n", " ",
).Replace
