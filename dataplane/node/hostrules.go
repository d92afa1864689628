package node

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/kubectl-nettrace/nettrace/dataplane/iptables"
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
var hostJumps = []iptables.Jump{
	{Table: "filter", From: "FORWARD", To: chainForward, Comment: "cali:forward"},
	{Table: "nat", From: "POSTROUTING", To: chainNATOutgoing, Comment: "cali:nat-outgoing"},
}

// installHostRules writes the host chains with iptables-restore --noflush
// (only our chains are flushed) and inserts the jumps to them, on the
// backend the node uses.
func installHostRules(ctx context.Context, pool netip.Prefix) error {
	backend, _ := iptables.DetectBackend(ctx, nil)
	ipt := &iptables.Runner{Backend: backend}
	if err := ipt.Restore(ctx, []byte(hostRules(pool))); err != nil {
		return fmt.Errorf("installing the host rules: %w", err)
	}
	return ipt.EnsureJumps(ctx, hostJumps)
}
