package render

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// ansi are the escape codes of the styles.
var ansi = map[style]string{
	styleNode:   "\x1b[36m",
	styleDrop:   "\x1b[1;31m",
	styleAccept: "\x1b[32m",
	styleNAT:    "\x1b[35m",
	styleTunnel: "\x1b[33m",
	styleHeader: "\x1b[1m",
	styleDim:    "\x1b[2m",
}

const ansiReset = "\x1b[0m"

// writeTable writes one line per hop group, "[node] what", the reply under
// a "reply" heading, then the losses and the verdict. wide puts the time
// since the first hop, the interfaces and the sources in front of each line.
func writeTable(w io.Writer, p trace.Path, color, wide bool) error {
	paint := func(segs []segment) string {
		var b strings.Builder
		for _, s := range segs {
			if code, ok := ansi[s.style]; ok && color && s.text != "" {
				b.WriteString(code + s.text + ansiReset)
			} else {
				b.WriteString(s.text)
			}
		}
		return b.String()
	}
	ls := lines(p)
	var columns [][3]string
	if wide {
		columns = wideColumns(ls)
	}
	widths := [3]int{}
	for _, c := range columns {
		for k := range c {
			widths[k] = max(widths[k], utf8.RuneCountInString(c[k]))
		}
	}
	var b strings.Builder
	inReply := false
	for i, l := range ls {
		if l.first().Direction == trace.Reply && !inReply {
			inReply = true
			b.WriteString(paint([]segment{{"reply", styleHeader}}) + "\n")
		}
		if wide {
			for k, c := range columns[i] {
				b.WriteString(c + strings.Repeat(" ", widths[k]-utf8.RuneCountInString(c)+2))
			}
		}
		segs := append([]segment{{"[" + l.first().Node + "]", styleNode}, {" ", plain}}, l.segs...)
		if wide {
			segs = append(segs, wideNotes(l)...)
		}
		b.WriteString(paint(segs) + "\n")
	}
	for _, loss := range p.Lost {
		b.WriteString(paint(lossLine(loss)) + "\n")
	}
	b.WriteString(paint(verdictLine(p.Verdict)) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// wideColumns are the time since the first hop, the interfaces and the
// sources of each line. The time of a rule walk, in parentheses, is when
// the tracer read it; the packet went by earlier, where the line stands.
func wideColumns(ls []line) [][3]string {
	var start time.Time
	for _, l := range ls {
		for _, h := range l.hops {
			if h.Kind != trace.HopRoute && (start.IsZero() || h.Time.Before(start)) {
				start = h.Time
			}
		}
	}
	out := make([][3]string, len(ls))
	for i, l := range ls {
		h := l.first()
		var at string
		switch h.Kind {
		case trace.HopRoute:
			at = "lookup"
		case trace.HopRule:
			// The time the tracer read the event, later than the packet.
			at = "(" + offset(h.Time.Sub(start)) + ")"
		default:
			at = offset(h.Time.Sub(start))
		}
		var sources []string
		for _, h := range l.hops {
			if !slices.Contains(sources, h.Source) {
				sources = append(sources, h.Source)
			}
		}
		out[i] = [3]string{at, interfaces(l), strings.Join(sources, "+")}
	}
	return out
}

// offset writes a time since the first hop in milliseconds: "+0.123ms".
func offset(d time.Duration) string {
	return fmt.Sprintf("+%.3fms", float64(d)/float64(time.Millisecond))
}

// interfaces are the interfaces of a line: input→output for a rule walk or
// a route lookup, the interface for the rest.
func interfaces(l line) string {
	h := l.first()
	switch {
	case h.Rule != nil:
		in, out := h.Rule.InIface, ""
		for _, r := range l.hops {
			if r.Rule != nil && r.Rule.OutIface != "" {
				out = r.Rule.OutIface
			}
		}
		return joinIfaces(in, out)
	case h.Route != nil:
		return joinIfaces(h.Iface, h.Route.Dev)
	}
	return h.Iface
}

func joinIfaces(in, out string) string {
	switch {
	case in == "" || out == "":
		return in + out
	case in == out:
		return in
	}
	return in + "→" + out
}

// wideNotes are the notes of a rule walk's hops, which the table leaves
// out: the nft trace ids, the duplicates merged, the retransmissions.
func wideNotes(l line) []segment {
	if l.first().Rule == nil {
		return nil
	}
	var notes []string
	for _, h := range l.hops {
		if h.Note != "" && !slices.Contains(notes, h.Note) {
			notes = append(notes, h.Note)
		}
	}
	if len(notes) == 0 {
		return nil
	}
	return []segment{{" (" + strings.Join(notes, "; ") + ")", styleDim}}
}
