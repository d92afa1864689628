package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAssertRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	typo := write("paths.yaml", `cases:
  - name: nginx
    source: client
    target: svc/nginx-test
    expect:
      verdict: replied
      nat:
        - type: DANT
          to: {selector: app=nginx-test}
      tunnel: gre
`)
	missing := filepath.Join(dir, "no-such-kubeconfig")
	good := write("good.yaml", "cases:\n  - {source: client, target: svc/nginx-test, expect: {verdict: replied}}\n")
	for _, c := range []struct {
		args []string
		code int
		want []string
	}{
		{args: []string{"assert"}, code: exitBadInput, want: []string{`required flag(s) "filename" not set`}},
		{args: []string{"assert", "-f", filepath.Join(dir, "nowhere.yaml")}, code: exitBadInput,
			want: []string{"reading the expectation file", "no such file or directory"}},
		{args: []string{"assert", "-f", typo}, code: exitBadInput, want: []string{
			"2 mistakes in the expectation file:\n",
			typo + `:8: cases[0].expect.nat[0].type: want DNAT or SNAT, got "DANT"` + "\n",
			typo + `:10: cases[0].expect.tunnel: want ipip, vxlan or none, got "gre"` + "\n",
			"see 'kubectl nettrace assert --help'",
		}},
		{args: []string{"assert", "-f", good, "extra"}, code: exitBadInput, want: []string{"takes no arguments"}},
		{args: []string{"--kubeconfig", missing, "assert", "-f", good}, code: exitCannotRun, want: []string{"no-such-kubeconfig"}},
		{args: []string{"ipam"}, code: exitOK},
		{args: []string{"ipam", "show", "extra"}, code: exitBadInput, want: []string{"takes no arguments"}},
		{args: []string{"--kubeconfig", missing, "ipam", "show", "--show-blocks"}, code: exitCannotRun,
			want: []string{"no-such-kubeconfig"}},
	} {
		r := runCommand(t, c.args...)
		if r.code != c.code {
			t.Errorf("%q: exit %d, want %d\nstdout: %s\nstderr: %s", c.args, r.code, c.code, r.stdout, r.stderr)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%q: stderr misses %q:\n%s", c.args, w, r.stderr)
			}
		}
	}
}

func TestAssertFailureExitsOne(t *testing.T) {
	err := ran(fmt.Errorf("%d of %d cases %w", 1, 3, errFailed))
	if code := exitCode(context.Background(), err); code != exitFailed {
		t.Errorf("exitCode(%v) = %d, want %d", err, code, exitFailed)
	}
	if err.Error() != "1 of 3 cases failed" {
		t.Errorf("the error says %q", err)
	}
}
