//go:build e2e

package e2e

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Seed §3: `calicoctl ipam show --show-blocks` prints the pool and the
// block of each node; `kubectl nettrace ipam show` prints the same table.
func TestIPAMShowPrintsThePoolAndABlockPerNode(t *testing.T) {
	ipamShow := func(args ...string) [][]string {
		out := run(t, append([]string{bin("kubectl-nettrace"), "--kubeconfig", labKubeconfig(t), "ipam", "show"}, args...)...)
		t.Logf("kubectl nettrace ipam show %s:\n%s", strings.Join(args, " "), out)
		var rows [][]string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			rows = append(rows, strings.Fields(line))
		}
		return rows
	}
	header := "GROUPING CIDR IPS TOTAL IPS IN USE IPS FREE"

	rows := ipamShow()
	if len(rows) != 2 || strings.Join(rows[0], " ") != header ||
		strings.Join(rows[1][:4], " ") != "IP Pool 172.16.0.0/16 65536" {
		t.Fatalf("ipam show: %q, want the header and the pool 172.16.0.0/16 of 65536 addresses", rows)
	}

	rows = ipamShow("--show-blocks")
	if len(rows) < 2 || strings.Join(rows[0], " ") != header || rows[1][2] != "172.16.0.0/16" {
		t.Fatalf("ipam show --show-blocks: %q, want the header and the pool first", rows)
	}
	pool := netip.MustParsePrefix("172.16.0.0/16")
	poolInUse := number(t, rows[1][4])
	var blocks []netip.Prefix
	blocksInUse := 0
	for _, r := range rows[2:] {
		if len(r) != 7 || r[0] != "Block" || r[2] != "256" {
			t.Fatalf("row %q, want a block of 256 addresses", r)
		}
		b := netip.MustParsePrefix(r[1])
		if b.Bits() != 24 || !pool.Contains(b.Addr()) {
			t.Errorf("block %s is not a /24 of the pool", b)
		}
		inUse, free := number(t, r[3]), number(t, r[5])
		if inUse+free != 256 || inUse == 0 {
			t.Errorf("block %s: %d in use and %d free, want 256 in all, some in use", b, inUse, free)
		}
		blocks = append(blocks, b)
		blocksInUse += inUse
	}
	if blocksInUse != poolInUse {
		t.Errorf("the blocks have %d addresses in use, the pool %d", blocksInUse, poolInUse)
	}

	// One block per node: the one that holds the node's tunnel address.
	nodes, err := clientset(t).CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != len(nodes.Items) || len(nodes.Items) != 3 {
		t.Fatalf("%d blocks for %d nodes, want one for each of the 3", len(blocks), len(nodes.Items))
	}
	for _, n := range nodes.Items {
		tunnel, err := netip.ParseAddr(n.Annotations["nettrace.dev/ipv4-tunnel-address"])
		if err != nil {
			t.Fatalf("node %s has no tunnel address: %v", n.Name, err)
		}
		held := 0
		for _, b := range blocks {
			if b.Contains(tunnel) {
				held++
			}
		}
		if held != 1 {
			t.Errorf("node %s's tunnel address %s is in %d blocks, want its own", n.Name, tunnel, held)
		}
	}
}

// number reads the count of "6" or "6 (0%)".
func number(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q is not a count", s)
	}
	return n
}
