package node

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// The host rules land on the backend the node uses, twice is the same as
// once, and rules of others in the built-in chains survive.
func TestHostRulesOnBothBackends(t *testing.T) {
	pool := netip.MustParsePrefix("172.16.0.0/16")
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			netns, err := testutils.NewNS()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
			save := func() string {
				var out []byte
				_ = netns.Do(func(ns.NetNS) error {
					out, err = exec.Command("iptables-" + backend + "-save").Output()
					return err
				})
				if err != nil {
					t.Fatalf("iptables-%s-save: %v", backend, err)
				}
				return string(out)
			}
			err = netns.Do(func(ns.NetNS) error {
				// A rule of someone else's, which also makes detection pick
				// this backend: the one with more rules, nft when tied.
				foreign := []string{"-A", "FORWARD", "-s", "10.1.2.3/32", "-j", "DROP"}
				if out, err := exec.Command("iptables-"+backend, foreign...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v", out, err)
				}
				for range 2 {
					if err := installHostRules(context.Background(), pool); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			got := save()
			for _, want := range []string{
				`-A FORWARD -m comment --comment "cali:forward" -j cali-FORWARD`,
				`-A cali-FORWARD -i cali+ -m comment --comment "cali:from-workload" -j ACCEPT`,
				`-A cali-FORWARD -o cali+ -m comment --comment "cali:to-workload" -j ACCEPT`,
				`-A POSTROUTING -m comment --comment "cali:nat-outgoing" -j cali-nat-outgoing`,
				`-A cali-nat-outgoing -s 172.16.0.0/16 ! -d 172.16.0.0/16 -m comment --comment "cali:nat-outgoing" -j MASQUERADE`,
				`-A FORWARD -s 10.1.2.3/32 -j DROP`,
			} {
				if n := strings.Count(got, want+"\n"); n != 1 {
					t.Errorf("%q appears %d times in iptables-%s-save, want once:\n%s", want, n, backend, got)
				}
			}
		})
	}
}
