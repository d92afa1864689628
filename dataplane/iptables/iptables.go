// Package iptables runs the iptables tools of one backend (legacy or nft)
// inside a network namespace, for the dataplane's programs that own chains:
// it restores chains with --noflush, saves tables, ensures the jump rules
// from built-in chains, and detects which backend a node uses the way
// kube-proxy's iptables-wrapper does.
package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Backend is an iptables implementation: the legacy xtables kernel API or
// nf_tables. Rules programmed through one are invisible to the other, so a
// node must use the backend the rest of its rules are in.
type Backend string

// The backends, and BackendAuto to detect the node's.
const (
	BackendAuto   Backend = ""
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
)

// restoreWaitSeconds is how long iptables-restore and iptables wait for the
// xtables lock (legacy only; nft ignores it).
const restoreWaitSeconds = "5"

// Runner runs one backend's iptables binaries, inside a network namespace
// when Netns is set.
type Runner struct {
	Backend Backend
	Netns   ns.NetNS
}

// Run runs "iptables-<backend><suffix> args..." with stdin and returns its
// standard output.
func (r *Runner) Run(ctx context.Context, suffix string, stdin []byte, args ...string) ([]byte, error) {
	return RunIn(ctx, r.Netns, "iptables-"+string(r.Backend)+suffix, stdin, args...)
}

// RunIn runs a command inside netns (nil: the caller's) and returns its
// standard output; a failure carries its standard error.
func RunIn(ctx context.Context, netns ns.NetNS, name string, stdin []byte, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := inNetNS(netns, cmd.Run)
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// inNetNS calls fn on an OS thread inside netns; commands it starts run
// there too. A nil netns calls fn directly.
func inNetNS(netns ns.NetNS, fn func() error) error {
	if netns == nil {
		return fn()
	}
	return netns.Do(func(ns.NetNS) error { return fn() })
}

// restoreFailedLine finds the line number iptables-restore reports when it
// rejects its input: "Error occurred at line: 12" for a parse error (nft
// reports the COMMIT of the table), "line 12 failed" for a commit.
var restoreFailedLine = regexp.MustCompile(`(?:Error occurred at line: |line )(\d+)`)

// Restore applies input with iptables-restore --noflush: the tables and
// chains it names are replaced, every other chain and rule stays. Each table
// is committed atomically.
func (r *Runner) Restore(ctx context.Context, input []byte) error {
	_, err := r.Run(ctx, "-restore", input, "-w", restoreWaitSeconds, "--noflush")
	if err == nil {
		return nil
	}
	if m := restoreFailedLine.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return fmt.Errorf("%w\n%s", err, linesAround(input, n, 2))
	}
	return err
}

// linesAround returns the lines n-around..n+around of text (1-based),
// numbered, to show where a restore failed.
func linesAround(text []byte, n, around int) string {
	var b strings.Builder
	i := 0
	for line := range bytes.Lines(text) {
		i++
		if i >= n-around && i <= n+around {
			fmt.Fprintf(&b, "%6d %s", i, line)
		}
	}
	return b.String()
}

// Save returns "iptables-save -t table".
func (r *Runner) Save(ctx context.Context, table string) ([]byte, error) {
	return r.Run(ctx, "-save", nil, "-t", table)
}

// EnsureChain creates a chain unless it exists.
func (r *Runner) EnsureChain(ctx context.Context, table, chain string) error {
	if _, err := r.Run(ctx, "", nil, "-w", restoreWaitSeconds, "-t", table, "-S", chain, "1"); err == nil {
		return nil
	}
	if _, err := r.Run(ctx, "", nil, "-w", restoreWaitSeconds, "-t", table, "-N", chain); err != nil {
		return fmt.Errorf("creating chain %s in table %s: %w", chain, table, err)
	}
	return nil
}

// EnsureRule inserts rule at the top of chain unless "-C" finds it there
// already (anywhere in the chain).
func (r *Runner) EnsureRule(ctx context.Context, table, chain string, rule []string) error {
	check := append([]string{"-w", restoreWaitSeconds, "-t", table, "-C", chain}, rule...)
	_, err := r.Run(ctx, "", nil, check...)
	if err == nil {
		return nil
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		return fmt.Errorf("checking rule in %s/%s: %w", table, chain, err)
	}
	insert := append([]string{"-w", restoreWaitSeconds, "-t", table, "-I", chain}, rule...)
	if _, err := r.Run(ctx, "", nil, insert...); err != nil {
		return fmt.Errorf("inserting rule in %s/%s: %w", table, chain, err)
	}
	return nil
}

// Jump is a rule in a built-in chain that sends packets into one of ours.
type Jump struct {
	Table, From, To string
	Match           []string
	Comment         string
}

// Rule returns the jump as iptables arguments.
func (j Jump) Rule() []string {
	rule := append([]string(nil), j.Match...)
	if j.Comment != "" {
		rule = append(rule, "-m", "comment", "--comment", j.Comment)
	}
	return append(rule, "-j", j.To)
}

// EnsureJumps makes sure our chains exist and the built-in chains jump to
// them, without touching any other rule of the built-in chains.
func (r *Runner) EnsureJumps(ctx context.Context, jumps []Jump) error {
	for _, j := range jumps {
		if err := r.EnsureChain(ctx, j.Table, j.To); err != nil {
			return err
		}
		if err := r.EnsureRule(ctx, j.Table, j.From, j.Rule()); err != nil {
			return fmt.Errorf("jump from %s to %s: %w", j.From, j.To, err)
		}
	}
	return nil
}

// kubeletChains matches the chains kubelet creates in the mangle table of
// the backend it uses (the iptables-wrapper test).
var kubeletChains = regexp.MustCompile(`(?m)^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) `)

// DetectBackend finds the backend the node in netns (nil: the caller's) uses,
// the way kube-proxy's iptables-wrapper does: the backend whose mangle table
// holds kubelet's KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY chain (nft is
// looked at first), else the backend with more rules, else nft. It returns
// the reason with the choice.
func DetectBackend(ctx context.Context, netns ns.NetNS) (Backend, string) {
	nftMangle, _ := RunIn(ctx, netns, "iptables-nft-save", nil, "-t", "mangle")
	if kubeletChains.Match(nftMangle) {
		return BackendNFT, "kubelet's chains are in nft's mangle table"
	}
	// Not "-t mangle": that would create the legacy table.
	legacyAll, _ := RunIn(ctx, netns, "iptables-legacy-save", nil)
	if kubeletChains.Match(legacyAll) {
		return BackendLegacy, "kubelet's chains are in legacy's mangle table"
	}
	nftAll, _ := RunIn(ctx, netns, "iptables-nft-save", nil)
	legacyRules, nftRules := countRules(legacyAll), countRules(nftAll)
	if legacyRules > nftRules {
		return BackendLegacy, fmt.Sprintf("legacy has more rules (%d) than nft (%d)", legacyRules, nftRules)
	}
	return BackendNFT, fmt.Sprintf("nft is the default (legacy has %d rules, nft %d)", legacyRules, nftRules)
}

// countRules counts the rules in iptables-save output.
func countRules(save []byte) int {
	n := 0
	for line := range bytes.Lines(save) {
		if bytes.HasPrefix(line, []byte("-A ")) {
			n++
		}
	}
	return n
}
