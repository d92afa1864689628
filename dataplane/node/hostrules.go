package node

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/kubectl-nettrace/nettrace/dataplane/servicenat"
)

// The host rules a Calico node has and pods need, in chains of their own:
//
//	filter cali-FORWARD (from FORWARD): accept traffic from and to the
//	    workload veths cali+, so that a FORWARD policy of DROP does not cut
//	    pods off (seed §5: "The FORWARD chain jumps to cali-FORWARD").
//	nat cali-nat-outgoing (from POSTROUTING): masquerade pod traffic that
//	    leaves the pool, as an IP pool with natOutgoing does; the outside
//	    world has no route back to pod addresses.
const (
	chainForward     = "cali-FORWARD"
	chainNATOutgoing = "cali-nat-outgoing"
)

// hostRules is the iptables-restore input for the chains above.
func hostRules(pool netip.Prefix) string {
	return strings.Join([]string{
		"*filter",
		":" + chainForward + " - [0:0]",
		"-A " + chainForward + ` -i cali+ -m comment --comment "cali:from-workload" -j ACCEPT`,
		"-A " + chainForward + ` -o cali+ -m comment --comment "cali:to-workload" -j ACCEPT`,
		"COMMIT",
		"*nat",
		":" + chainNATOutgoing + " - [0:0]",
		fmt.Sprintf(`-A %s -s %s ! -d %s -m comment --comment "cali:nat-outgoing" -j MASQUERADE`, chainNATOutgoing, pool, pool),
		"COMMIT",
		"",
	}, "\n")
}

// hostJumps are the rules in the built-in chains that lead to ours.
var hostJumps = []struct{ table, chain, comment, target string }{
	{"filter", "FORWARD", "cali:forward", chainForward},
	{"nat", "POSTROUTING", "cali:nat-outgoing", chainNATOutgoing},
}

// installHostRules writes the host chains with iptables-restore --noflush
// (only our chains are flushed) and inserts the jumps to them, on the
// backend the node uses.
func installHostRules(ctx context.Context, pool netip.Prefix) error {
	backend, _ := servicenat.DetectBackend(ctx, nil)
	bin := "iptables-" + string(backend)
	if err := run(ctx, bin+"-restore", []byte(hostRules(pool)), "--noflush", "--wait"); err != nil {
		return err
	}
	for _, j := range hostJumps {
		rule := []string{j.chain, "-m", "comment", "--comment", j.comment, "-j", j.target}
		if run(ctx, bin, nil, append([]string{"-w", "-t", j.table, "-C"}, rule...)...) == nil {
			continue
		}
		if err := run(ctx, bin, nil, append([]string{"-w", "-t", j.table, "-I"}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}

func run(ctx context.Context, name string, stdin []byte, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
