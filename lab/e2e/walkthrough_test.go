//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestWalkthroughStillMatches regenerates docs/walkthrough.md with
// scripts/walkthrough.sh into a temporary file and checks that it still
// matches the committed one in shape: the same sections, the same blocks
// with the same commands, and the same output once the addresses, ports,
// hashes, ages, timings and ARP lines (which follow the neighbour caches)
// are set aside. The output of a block marked "varies" is not compared.
func TestWalkthroughStillMatches(t *testing.T) {
	traceSetup(t)
	fresh := filepath.Join(t.TempDir(), "walkthrough.md")
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "walkthrough.sh"), fresh)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+labKubeconfig(t), "NETTRACE_PLUGIN="+bin("kubectl-nettrace"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/walkthrough.sh: %v\n%s", err, out)
	}
	want := readWalkthrough(t, filepath.Join(repoRoot, "docs", "walkthrough.md"))
	got := readWalkthrough(t, fresh)
	if len(got) != len(want) {
		t.Fatalf("%d sections, want %d: %q", len(got), len(want), titles(got))
	}
	for i, w := range want {
		g := got[i]
		if g.title != w.title {
			t.Errorf("section %d is %q, want %q", i, g.title, w.title)
			continue
		}
		if len(g.blocks) != len(w.blocks) {
			t.Errorf("%s: %d blocks, want %d", w.title, len(g.blocks), len(w.blocks))
			continue
		}
		for j, wb := range w.blocks {
			compareBlock(t, fmt.Sprintf("%s, block %d", w.title, j+1), g.blocks[j], wb)
		}
	}
}

// walkthroughSection is a "## " section of the walkthrough.
type walkthroughSection struct {
	title  string
	blocks []consoleBlock
}

// consoleBlock is a console block: its commands and what each printed.
type consoleBlock struct {
	varies   bool
	commands []string
	outputs  []string
}

// readWalkthrough splits a walkthrough into its sections and blocks.
func readWalkthrough(t *testing.T, path string) []walkthroughSection {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sections []walkthroughSection
	var block *consoleBlock
	varies := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case block != nil && line == "```":
			s := &sections[len(sections)-1]
			s.blocks = append(s.blocks, *block)
			block = nil
		case block != nil && strings.HasPrefix(line, "$ "):
			block.commands = append(block.commands, strings.TrimPrefix(line, "$ "))
			block.outputs = append(block.outputs, "")
		case block != nil && len(block.outputs) > 0:
			block.outputs[len(block.outputs)-1] += line + "\n"
		case strings.HasPrefix(line, "## "):
			sections = append(sections, walkthroughSection{title: strings.TrimPrefix(line, "## ")})
		case strings.HasPrefix(line, "<!-- varies:"):
			varies = true
		case line == "```console" && len(sections) > 0:
			block, varies = &consoleBlock{varies: varies}, false
		}
	}
	return sections
}

func titles(sections []walkthroughSection) []string {
	var out []string
	for _, s := range sections {
		out = append(out, s.title)
	}
	return out
}

// compareBlock compares a block's commands, and unless it varies, their
// outputs once normalised.
func compareBlock(t *testing.T, where string, got, want consoleBlock) {
	t.Helper()
	if strings.Join(got.commands, "\n") != strings.Join(want.commands, "\n") || got.varies != want.varies {
		t.Errorf("%s: commands\n%s\nwant\n%s", where, strings.Join(got.commands, "\n"), strings.Join(want.commands, "\n"))
		return
	}
	for i, cmd := range want.commands {
		if want.varies {
			if strings.TrimSpace(got.outputs[i]) == "" && strings.TrimSpace(want.outputs[i]) != "" {
				t.Errorf("%s: `%s` printed nothing", where, cmd)
			}
			continue
		}
		g, w := normalizeOutput(got.outputs[i]), normalizeOutput(want.outputs[i])
		if g != w {
			t.Errorf("%s: the output of `%s` changed; normalised, it is\n%s\nwant\n%s", where, cmd, g, w)
		}
	}
}

// The parts of an output that change from run to run.
var outputNoise = []struct {
	re   *regexp.Regexp
	with string
}{
	// ARP follows the neighbour caches, which other traffic refreshes.
	{regexp.MustCompile(`(?m)^\[[^\]]+\] .* → ARP .*\n`), ""},
	{regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?(:\d+)?\b`), "IP"},
	{regexp.MustCompile(`\b\d{1,3}(-\d{1,3}){3}\b`), "IP"},
	{regexp.MustCompile(`\bfe80::[0-9a-f:]+(/\d+)?`), "IP6"},
	{regexp.MustCompile(`\b(\d+):\d{5}/(TCP|UDP)\b`), "$1:NODEPORT/$2"},
	{regexp.MustCompile(`\b(KUBE-[A-Z]+)-[A-Z2-7]{16}\b`), "$1-HASH"},
	{regexp.MustCompile(`\bcali[0-9a-f]{11}\b`), "caliHASH"},
	{regexp.MustCompile(`-[a-z0-9]{8,10}-[a-z0-9]{5}\b`), "-HASH"},
	{regexp.MustCompile(`\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b`), "MAC"},
	{regexp.MustCompile(`\bid \d+`), "id N"},
	{regexp.MustCompile(`\d+(\.\d+)?(/\d+(\.\d+)?)*\s?ms\b`), "T ms"},
	{regexp.MustCompile(`\b\d+[smhd](\d+[smh])?\b`), "AGE"},
	{regexp.MustCompile(`[ \t]+`), " "},
	{regexp.MustCompile(`(?m) +$`), ""},
}

// normalizeOutput sets aside what changes from run to run.
func normalizeOutput(s string) string {
	for _, n := range outputNoise {
		s = n.re.ReplaceAllString(s, n.with)
	}
	return s
}
