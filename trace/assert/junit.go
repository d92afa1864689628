package assert

import (
	"encoding/xml"
	"fmt"
	"io"
	"time"
)

// The JUnit XML elements, as CI systems (Jenkins, GitLab, GitHub actions)
// read them: one testsuite for the file, one testcase per case.
type (
	junitSuites struct {
		XMLName  xml.Name     `xml:"testsuites"`
		Name     string       `xml:"name,attr"`
		Tests    int          `xml:"tests,attr"`
		Failures int          `xml:"failures,attr"`
		Errors   int          `xml:"errors,attr"`
		Time     string       `xml:"time,attr"`
		Suites   []junitSuite `xml:"testsuite"`
	}
	junitSuite struct {
		Name      string      `xml:"name,attr"`
		Tests     int         `xml:"tests,attr"`
		Failures  int         `xml:"failures,attr"`
		Errors    int         `xml:"errors,attr"`
		Skipped   int         `xml:"skipped,attr"`
		Time      string      `xml:"time,attr"`
		Timestamp string      `xml:"timestamp,attr"`
		Cases     []junitCase `xml:"testcase"`
	}
	junitCase struct {
		Name      string        `xml:"name,attr"`
		Classname string        `xml:"classname,attr"`
		File      string        `xml:"file,attr"`
		Line      int           `xml:"line,attr"`
		Time      string        `xml:"time,attr"`
		Failure   *junitProblem `xml:"failure,omitempty"`
		Error     *junitProblem `xml:"error,omitempty"`
		SystemOut *junitText    `xml:"system-out,omitempty"`
	}
	junitProblem struct {
		Message string `xml:"message,attr"`
		Type    string `xml:"type,attr"`
		Text    string `xml:",cdata"`
	}
	// junitText keeps its lines readable in the file.
	junitText struct {
		Text string `xml:",cdata"`
	}
)

// WriteJUnit writes the results as JUnit XML: a testsuite named after the
// file, and a testcase per case with its time; a failed case has a failure
// element with the expectations that failed and the observed path, a case
// that could not run an error element.
func WriteJUnit(w io.Writer, f *File, results []Result) error {
	suite := junitSuite{Name: f.Name, Tests: len(results)}
	var total time.Duration
	for _, r := range results {
		if suite.Timestamp == "" {
			suite.Timestamp = r.Started.UTC().Format(time.RFC3339)
		}
		total += r.Duration
		c := junitCase{Name: r.Case.Name, Classname: f.Name, File: f.Name, Line: r.Case.Line, Time: seconds(r.Duration)}
		if r.Path != nil {
			c.SystemOut = &junitText{pathText(*r.Path, "")}
		}
		switch {
		case r.Err != nil:
			suite.Errors++
			c.Error = &junitProblem{Message: r.Err.Error(), Type: "error", Text: r.Err.Error()}
		case len(r.Failures) > 0:
			suite.Failures++
			first := r.Failures[0]
			msg := fmt.Sprintf("%s: expected %s, observed %s", first.Field, first.Expected, first.Observed)
			if len(r.Failures) > 1 {
				msg = fmt.Sprintf("%d expectations failed, first %s", len(r.Failures), msg)
			}
			c.Failure = &junitProblem{Message: msg, Type: "assertion", Text: failureText(f.Name, r.Failures, "")}
		}
		suite.Cases = append(suite.Cases, c)
	}
	suite.Time = seconds(total)
	doc := junitSuites{Name: "kubectl nettrace assert", Tests: suite.Tests, Failures: suite.Failures,
		Errors: suite.Errors, Time: suite.Time, Suites: []junitSuite{suite}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("writing JUnit XML: %w", err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// seconds writes a duration as JUnit's time attribute: "1.234".
func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }
