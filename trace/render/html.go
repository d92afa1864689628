package render

import (
	"fmt"
	"html"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Layout of the SVG sequence diagram, in pixels.
const (
	svgMargin    = 20
	svgGap       = 20 // between two participants' boxes
	svgBoxWidth  = 190
	svgBoxHeight = 40
	svgRow       = 34
	svgCharWidth = 7.3 // of the 12px monospace labels
	svgSelfLoop  = 26
	svgArrowHead = 8
	// svgLabelRunes bounds an arrow's label; the whole line is in its
	// tooltip and in the table below the diagram.
	svgLabelRunes = 110
)

// cssClass names the style of a segment in the page.
var cssClass = map[style]string{
	styleNode:   "node",
	styleDrop:   "drop",
	styleAccept: "accept",
	styleNAT:    "nat",
	styleTunnel: "tunnel",
	styleHeader: "header",
	styleDim:    "dim",
}

// pageStyle is the page's only style sheet.
const pageStyle = `body { font-family: sans-serif; margin: 1.5em; color: #1f2328; }
h1 { font-size: 1.3em; }
pre, svg text { font-family: ui-monospace, monospace; font-size: 12px; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
.node { color: #0969da; } .drop { color: #cf222e; font-weight: bold; } .accept { color: #1a7f37; }
.nat { color: #8250df; } .tunnel { color: #9a6700; } .header { font-weight: bold; } .dim { color: #656d76; }
svg text { white-space: pre; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg .box { fill: #f6f8fa; stroke: #57606a; } svg .life { stroke: #8c959f; stroke-dasharray: 4 4; }
svg .request { stroke: #0969da; fill: none; } svg .reply { stroke: #8250df; fill: none; stroke-dasharray: 6 3; }
svg .stop { stroke: #cf222e; fill: none; } svg .head-request { fill: #0969da; } svg .head-reply { fill: #8250df; }
svg .head-stop { fill: #cf222e; } svg .label { fill: #1f2328; } svg .section { fill: #656d76; font-weight: bold; }
svg .drop { fill: #cf222e; font-weight: bold; } svg .accept { fill: #1a7f37; }`

// writeHTML writes a page that needs nothing else: the flow and verdict,
// an SVG sequence diagram drawn here (the participants of the Mermaid
// diagram, one arrow per line of the table), and the table.
func writeHTML(w io.Writer, p trace.Path) error {
	ls := lines(p)
	var b strings.Builder
	title := html.EscapeString(p.Flow.String())
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>nettrace %s</title>\n<style>\n%s\n</style>\n</head>\n<body>\n", title, pageStyle)
	fmt.Fprintf(&b, "<h1>%s</h1>\n<p>%s</p>\n", title, spans(verdictLine(p.Verdict)))
	writeSVG(&b, p, ls)
	b.WriteString("<pre>")
	inReply := false
	for _, l := range ls {
		if l.first().Direction == trace.Reply && !inReply {
			inReply = true
			b.WriteString(spans([]segment{{"reply", styleHeader}}) + "\n")
		}
		b.WriteString(spans(append([]segment{{"[" + l.first().Node + "]", styleNode}, {" ", plain}}, l.segs...)) + "\n")
	}
	for _, loss := range p.Lost {
		b.WriteString(spans(lossLine(loss)) + "\n")
	}
	b.WriteString(spans(verdictLine(p.Verdict)) + "</pre>\n</body>\n</html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// spans writes segments as escaped text in spans of their class.
func spans(segs []segment) string {
	var b strings.Builder
	for _, s := range segs {
		if class, ok := cssClass[s.style]; ok {
			fmt.Fprintf(&b, "<span class=\"%s\">%s</span>", class, html.EscapeString(s.text))
		} else {
			b.WriteString(html.EscapeString(s.text))
		}
	}
	return b.String()
}

// writeSVG draws the sequence diagram: a box and a lifeline per
// participant, then one labelled arrow per line, the reply under a
// heading, and the verdict.
func writeSVG(b *strings.Builder, p trace.Path, ls []line) {
	c := castOf(p, ls)
	box := svgBoxWidth
	for _, pt := range c.participants {
		box = max(box, textWidth(pt.label)+svgMargin)
	}
	x := func(i int) int { return svgMargin + box/2 + i*(box+svgGap) }
	rows := len(ls) + 2 // the lines, the verdict and the reply heading
	height := svgMargin*2 + svgBoxHeight + (rows+1)*svgRow
	width := x(len(c.participants)-1) + box/2 + svgMargin
	for i, l := range ls {
		labelEnd := min(x(c.of[i]), x(from(c, ls, i))) + 8 + textWidth(plainText(shorten(l.segs))) + svgMargin
		width = max(width, labelEnd)
	}
	verdict := plainText(verdictLine(p.Verdict))
	width = max(width, svgMargin*2+textWidth(verdict))

	fmt.Fprintf(b, "<svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" xml:space=\"preserve\" role=\"img\" aria-label=\"sequence diagram of the path\">\n",
		width, height, width, height)
	bottom := height - svgMargin
	for i, pt := range c.participants {
		fmt.Fprintf(b, "<rect class=\"box\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"4\"/>\n", x(i)-box/2, svgMargin, box, svgBoxHeight)
		fmt.Fprintf(b, "<text class=\"label\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x(i), svgMargin+svgBoxHeight/2+4, html.EscapeString(pt.label))
		fmt.Fprintf(b, "<line class=\"life\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>\n", x(i), svgMargin+svgBoxHeight, x(i), bottom)
	}
	y := svgMargin + svgBoxHeight + svgRow
	inReply := false
	for i, l := range ls {
		h := l.first()
		if h.Direction == trace.Reply && !inReply {
			inReply = true
			fmt.Fprintf(b, "<text class=\"section\" x=\"%d\" y=\"%d\">reply</text>\n", svgMargin, y)
			y += svgRow
		}
		kind := string(h.Direction)
		if stopsAt(l) {
			kind = "stop"
		}
		f, t := x(from(c, ls, i)), x(c.of[i])
		label := min(f, t) + 8
		fmt.Fprintf(b, "<text class=\"label\" x=\"%d\" y=\"%d\"><title>%s</title>%s</text>\n",
			label, y-6, html.EscapeString(l.text()), svgSpans(shorten(l.segs)))
		switch {
		case f == t:
			fmt.Fprintf(b, "<path class=\"%s\" d=\"M %d %d h %d v %d h %d\"/>\n", kind, f, y, svgSelfLoop, svgArrowHead, -svgSelfLoop+svgArrowHead)
			arrowHead(b, kind, f+svgArrowHead, y+svgArrowHead, -1)
		default:
			fmt.Fprintf(b, "<line class=\"%s\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>\n", kind, f, y, t, y)
			dir := 1
			if t < f {
				dir = -1
			}
			arrowHead(b, kind, t, y, dir)
		}
		y += svgRow
	}
	fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\">%s</text>\n</svg>\n", svgMargin, y, svgSpans(verdictLine(p.Verdict)))
}

// shorten cuts segments to svgLabelRunes runes, ending them with "…".
func shorten(segs []segment) []segment {
	left := svgLabelRunes
	var out []segment
	for _, s := range segs {
		n := utf8.RuneCountInString(s.text)
		if n <= left {
			out = append(out, s)
			left -= n
			continue
		}
		out = append(out, segment{string([]rune(s.text)[:left]) + "…", s.style})
		break
	}
	return out
}

// textWidth estimates the width of a label in pixels.
func textWidth(s string) int {
	return int(float64(utf8.RuneCountInString(s)) * svgCharWidth)
}

// from is the participant the packet was at before line i: the one of the
// line before in the same direction, or its own for a direction's first.
func from(c cast, ls []line, i int) int {
	if i == 0 || ls[i-1].first().Direction != ls[i].first().Direction {
		return c.of[i]
	}
	return c.of[i-1]
}

// stopsAt reports whether a line is where the packet was dropped.
func stopsAt(l line) bool {
	for _, s := range l.segs {
		if s.style == styleDrop {
			return true
		}
	}
	return false
}

// arrowHead draws the head of an arrow ending at (x, y), pointing right
// (dir 1) or left (dir -1).
func arrowHead(b *strings.Builder, kind string, x, y, dir int) {
	back := x - dir*svgArrowHead
	fmt.Fprintf(b, "<polygon class=\"head-%s\" points=\"%d,%d %d,%d %d,%d\"/>\n", kind, x, y, back, y-svgArrowHead/2, back, y+svgArrowHead/2)
}

// svgSpans writes segments as tspans of their class.
func svgSpans(segs []segment) string {
	var b strings.Builder
	for _, s := range segs {
		if class, ok := cssClass[s.style]; ok {
			fmt.Fprintf(&b, "<tspan class=\"%s\">%s</tspan>", class, html.EscapeString(s.text))
		} else {
			b.WriteString(html.EscapeString(s.text))
		}
	}
	return b.String()
}
