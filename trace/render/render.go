// Package render writes a trace.Path for people and programs: a table of
// one line per hop group (wide adds times, interfaces and sources), the
// path as JSON or YAML (the versioned schema of docs/schema.md), a Mermaid
// sequence diagram, and a self-contained HTML page with an SVG sequence
// diagram drawn here.
package render

import (
	"fmt"
	"io"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Format is an output format.
type Format string

// The formats a path can be written in.
const (
	Table   Format = "table"
	Wide    Format = "wide"
	JSON    Format = "json"
	YAML    Format = "yaml"
	Mermaid Format = "mermaid"
	HTML    Format = "html"
)

// Formats lists the formats in the order a help text shows them.
var Formats = []Format{Table, Wide, JSON, YAML, Mermaid, HTML}

// ParseFormat parses the name of a format.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return "", fmt.Errorf("unknown output format %q: want one of %s", s, strings.Join(names, ", "))
}

// Options tune the text formats.
type Options struct {
	// Color colours the table and wide formats with ANSI escape codes.
	Color bool
}

// Render writes p to w in format f.
func Render(w io.Writer, p trace.Path, f Format, opts Options) error {
	var err error
	switch f {
	case Table:
		err = writeTable(w, p, opts.Color, false)
	case Wide:
		err = writeTable(w, p, opts.Color, true)
	case JSON:
		err = writeJSON(w, p)
	case YAML:
		err = writeYAML(w, p)
	case Mermaid:
		err = writeMermaid(w, p)
	case HTML:
		err = writeHTML(w, p)
	default:
		_, err = ParseFormat(string(f))
	}
	if err != nil {
		return fmt.Errorf("rendering the path as %s: %w", f, err)
	}
	return nil
}
