package assert

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/render"
)

// Tracer traces the flow of a case, as `kubectl nettrace` does.
type Tracer func(ctx context.Context, c Case) (*trace.Path, error)

// Result is how one case went.
type Result struct {
	Case Case
	// Path is the traced path; nil when the trace could not run.
	Path *trace.Path
	// Failures are the expectations the path does not meet.
	Failures []Failure
	// Err says why the case could not be checked: the trace could not
	// run, or a pod or node could not be looked up.
	Err error
	// Started and Duration time the case, its trace and its check.
	Started  time.Time
	Duration time.Duration
}

// Passed reports whether the case ran and met every expectation.
func (r Result) Passed() bool { return r.Err == nil && len(r.Failures) == 0 }

// Run traces the cases of f one after the other and checks their paths.
// It stops early when ctx ends; the results then hold the cases run.
func Run(ctx context.Context, f *File, tr Tracer, cl Cluster) []Result {
	var results []Result
	for _, c := range f.Cases {
		if ctx.Err() != nil {
			break
		}
		r := Result{Case: c, Started: time.Now()}
		r.Path, r.Err = tr(ctx, c)
		if r.Err == nil {
			r.Failures, r.Err = Check(ctx, c, *r.Path, cl)
		}
		r.Duration = time.Since(r.Started)
		results = append(results, r)
	}
	return results
}

// WriteReport writes one line per case, PASS, FAIL or ERROR with its time,
// and under a failure each expectation that failed, at its line, with
// what was expected and what was observed, then the observed path as the
// table format draws it. A summary line ends it.
func WriteReport(w io.Writer, f *File, results []Result) error {
	var b strings.Builder
	passed, failed, errored := 0, 0, 0
	for _, r := range results {
		status := "PASS"
		switch {
		case r.Err != nil:
			status = "ERROR"
			errored++
		case len(r.Failures) > 0:
			status = "FAIL"
			failed++
		default:
			passed++
		}
		fmt.Fprintf(&b, "--- %s: %s (%s:%d, %.2fs)\n", status, r.Case.Name, f.Name, r.Case.Line, r.Duration.Seconds())
		if r.Err != nil {
			fmt.Fprintf(&b, "    %v\n", r.Err)
		}
		b.WriteString(failureText(f.Name, r.Failures, "    "))
		if !r.Passed() && r.Path != nil {
			b.WriteString("    observed path:\n")
			b.WriteString(pathText(*r.Path, "      "))
		}
	}
	fmt.Fprintf(&b, "%d passed, %d failed, %d could not run, of %d cases in %s\n",
		passed, failed, errored, len(f.Cases), f.Name)
	_, err := io.WriteString(w, b.String())
	return err
}

// failureText writes each failure as two lines, the expected and the
// observed.
func failureText(file string, failures []Failure, indent string) string {
	var b strings.Builder
	for _, fl := range failures {
		fmt.Fprintf(&b, "%s%s:%d: %s:\n", indent, file, fl.Line, fl.Field)
		fmt.Fprintf(&b, "%s    expected: %s\n", indent, fl.Expected)
		fmt.Fprintf(&b, "%s    observed: %s\n", indent, fl.Observed)
	}
	return b.String()
}

// pathText draws a path as the table format does, each line indented.
func pathText(p trace.Path, indent string) string {
	var buf bytes.Buffer
	if err := render.Render(&buf, p, render.Table, render.Options{}); err != nil {
		return indent + err.Error() + "\n"
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line != "" {
			b.WriteString(indent + line)
		}
	}
	return b.String()
}
