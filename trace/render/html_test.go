package render

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// TestHTMLIsSelfContained parses the page of every fixture: it must hold
// an SVG diagram with a lifeline per participant and an arrow per line,
// the table, and nothing that loads anything: no script, no element that
// fetches, no attribute that points elsewhere, no url() in the style.
func TestHTMLIsSelfContained(t *testing.T) {
	for name, p := range fixtures(t) {
		doc, err := html.Parse(bytes.NewReader(render(t, p, HTML, Options{})))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		count := map[string]int{}
		var svg, pre *html.Node
		var walk func(n *html.Node)
		walk = func(n *html.Node) {
			if n.Type == html.ElementNode {
				count[n.Data]++
				switch n.Data {
				case "svg":
					svg = n
				case "pre":
					pre = n
				case "script", "link", "img", "iframe", "object", "embed", "image", "use", "foreignObject", "base", "audio", "video", "source":
					t.Errorf("%s: <%s> element", name, n.Data)
				}
				for _, a := range n.Attr {
					key := strings.ToLower(a.Key)
					if key == "src" || key == "href" || strings.HasSuffix(key, ":href") || key == "action" || strings.HasPrefix(key, "on") ||
						strings.Contains(a.Val, "://") || strings.Contains(a.Val, "url(") {
						t.Errorf("%s: <%s %s=%q>", name, n.Data, a.Key, a.Val)
					}
				}
				if n.Data == "style" && n.FirstChild != nil && (strings.Contains(n.FirstChild.Data, "url(") || strings.Contains(n.FirstChild.Data, "@import")) {
					t.Errorf("%s: the style sheet loads something", name)
				}
			}
			for c := n.FirstChild; c != nil; c = c.NextSibling {
				walk(c)
			}
		}
		walk(doc)
		if svg == nil || pre == nil {
			t.Fatalf("%s: svg %v, table %v", name, svg != nil, pre != nil)
		}
		ls := lines(p)
		c := castOf(p, ls)
		if count["rect"] != len(c.participants) {
			t.Errorf("%s: %d boxes, want one per participant (%d)", name, count["rect"], len(c.participants))
		}
		if count["polygon"] != len(ls) {
			t.Errorf("%s: %d arrow heads, want one per line (%d)", name, count["polygon"], len(ls))
		}
		if got := textOf(pre); !strings.Contains(got, "verdict: "+string(p.Verdict.Result)) {
			t.Errorf("%s: the table does not end in the verdict:\n%s", name, got)
		}
	}
}

func textOf(n *html.Node) string {
	if n.Type == html.TextNode {
		return n.Data
	}
	var b strings.Builder
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		b.WriteString(textOf(c))
	}
	return b.String()
}
