package ipam

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestBlockName(t *testing.T) {
	got := BlockName(netip.MustParsePrefix("172.16.116.0/24"))
	if got != "172-16-116-0-24" {
		t.Fatalf("BlockName = %q, want 172-16-116-0-24", got)
	}
}

func TestHandleName(t *testing.T) {
	containerd := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	tests := []struct {
		handle string
		want   string // "" means: a sanitised name with a hash suffix
	}{
		{containerd, containerd},
		{"tunnel.k8s-w1", "tunnel.k8s-w1"},
		{"Upper_Case", ""},
		{"_leading", ""},
		{strings.Repeat("a", 300), ""},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := HandleName(tt.handle)
		if tt.want != "" && got != tt.want {
			t.Errorf("HandleName(%q) = %q, want %q", tt.handle, got, tt.want)
		}
		if len(got) > maxNameLen {
			t.Errorf("HandleName(%q) is %d characters long", tt.handle, len(got))
		}
		for _, r := range got {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
				t.Errorf("HandleName(%q) = %q has %q", tt.handle, got, r)
			}
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("HandleName(%q) = HandleName(%q) = %q", tt.handle, prev, got)
		}
		seen[got] = tt.handle
	}
	if a, b := HandleName("ABC"), HandleName("abc"); a == b {
		t.Errorf("HandleName does not tell ABC from abc: both %q", a)
	}
}

func TestAddrAt(t *testing.T) {
	block := netip.MustParsePrefix("172.16.158.0/24")
	for o, want := range map[int]string{0: "172.16.158.0", 1: "172.16.158.1", 16: "172.16.158.16", 255: "172.16.158.255"} {
		if got := addrAt(block, o); got != netip.MustParseAddr(want) {
			t.Errorf("addrAt(%s, %d) = %s, want %s", block, o, got, want)
		}
	}
	if got := addrAt(netip.MustParsePrefix("10.0.255.0/24"), 255); got != netip.MustParseAddr("10.0.255.255") {
		t.Errorf("addrAt at the end of a /24 = %s", got)
	}
}

func TestPoolGeometry(t *testing.T) {
	geo, err := DefaultPool().geometry()
	if err != nil {
		t.Fatal(err)
	}
	if n := geo.blockCount(); n != 1024 {
		t.Fatalf("a /16 of /26 blocks has %d blocks, want 1024", n)
	}
	if b := geo.blockAt(0); b != netip.MustParsePrefix("172.16.0.0/26") {
		t.Fatalf("block 0 = %s", b)
	}
	if b := geo.blockAt(5); b != netip.MustParsePrefix("172.16.1.64/26") {
		t.Fatalf("block 5 = %s", b)
	}
	if b := geo.blockAt(1023); b != netip.MustParsePrefix("172.16.255.192/26") {
		t.Fatalf("block 1023 = %s", b)
	}
}

func TestUnclaimedBlock(t *testing.T) {
	geo := poolGeometry{cidr: netip.MustParsePrefix("10.0.0.0/22"), blockSize: 24}
	claimed := map[netip.Prefix]bool{}
	first, ok := geo.unclaimedBlock("k8s-w1", claimed)
	if !ok {
		t.Fatal("no block in an empty pool")
	}
	if again, _ := geo.unclaimedBlock("k8s-w1", claimed); again != first {
		t.Fatalf("the same node got %s, then %s", first, again)
	}
	// Claiming every block in turn hands out each block exactly once.
	var got []netip.Prefix
	for {
		b, ok := geo.unclaimedBlock("k8s-w1", claimed)
		if !ok {
			break
		}
		if claimed[b] {
			t.Fatalf("%s handed out twice", b)
		}
		claimed[b] = true
		got = append(got, b)
	}
	if len(got) != 4 {
		t.Fatalf("claimed %d blocks of a /22 in /24s, want 4: %v", len(got), got)
	}
	// Nodes start at different places, so they do not all race for one block.
	starts := map[netip.Prefix]bool{}
	for _, node := range []string{"k8s-m", "k8s-w1", "k8s-w2", "k8s-w3", "k8s-w4"} {
		b, _ := geo.unclaimedBlock(node, map[netip.Prefix]bool{})
		starts[b] = true
	}
	if len(starts) < 2 {
		t.Fatalf("five nodes all start at %v", starts)
	}
}

func TestNewBlockSpecReservesTheTunnelAddress(t *testing.T) {
	cidr := netip.MustParsePrefix("172.16.158.0/29")
	spec := newBlockSpec(cidr, "default-ipv4-ippool", "k8s-w1", metav1.Now())
	if !slices.Equal(spec.Free, []int{1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("free list = %v, want 1..7", spec.Free)
	}
	tunnel, ok := spec.allocation(0)
	if !ok || tunnel.Kind != TunnelAddress || tunnel.Handle != "tunnel.k8s-w1" || tunnel.Node != "k8s-w1" {
		t.Fatalf("ordinal 0 = %+v, %v; want the tunnel of k8s-w1", tunnel, ok)
	}
	if spec.Affinity != "host:k8s-w1" || spec.CIDR != "172.16.158.0/29" {
		t.Fatalf("spec = %+v", spec)
	}
	if n := spec.inUse(blockSizeAddrs(cidr)); n != 1 {
		t.Fatalf("a new block has %d addresses in use, want 1 (the tunnel)", n)
	}
}

func TestFreeListTakesFromTheFrontAndReleasesToTheBack(t *testing.T) {
	spec := newBlockSpec(netip.MustParsePrefix("10.0.0.0/29"), "p", "n", metav1.Now())
	var taken []int
	for _, h := range []string{"a", "b", "c"} {
		o, ok := spec.take(Allocation{Handle: h, Kind: PodAddress, Node: "n"})
		if !ok {
			t.Fatalf("take(%s) found the block full", h)
		}
		taken = append(taken, o)
	}
	if !slices.Equal(taken, []int{1, 2, 3}) {
		t.Fatalf("took %v, want 1 2 3", taken)
	}
	released := spec.release(func(a Allocation) bool { return a.Handle == "b" })
	if len(released) != 1 || released[0].Ordinal != 2 {
		t.Fatalf("released %+v, want ordinal 2", released)
	}
	if !slices.Equal(spec.Free, []int{4, 5, 6, 7, 2}) {
		t.Fatalf("free list after release = %v, want 4 5 6 7 2", spec.Free)
	}
	if _, ok := spec.allocation(2); ok {
		t.Fatal("ordinal 2 is still allocated")
	}
	for range 5 {
		if _, ok := spec.take(Allocation{Handle: "x", Kind: PodAddress}); !ok {
			t.Fatal("block full too early")
		}
	}
	if _, ok := spec.take(Allocation{Handle: "y", Kind: PodAddress}); ok {
		t.Fatal("took from a full block")
	}
	ordinals := make([]int, 0, len(spec.Allocations))
	for _, a := range spec.Allocations {
		ordinals = append(ordinals, a.Ordinal)
	}
	if !slices.Equal(ordinals, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("allocations are not sorted by ordinal: %v", ordinals)
	}
}

func TestPoolValidate(t *testing.T) {
	tests := []struct {
		cidr      string
		blockSize int
		wantErr   string
	}{
		{"172.16.0.0/16", 26, ""},
		{"172.16.0.0/16", 24, ""},
		{"10.0.0.0/24", 24, ""},
		{"172.16.0.0/33", 26, "CIDR"},
		{"172.16.0.1/16", 26, "host bits"},
		{"fd00::/64", 120, "not IPv4"},
		{"banana", 26, "CIDR"},
		{"172.16.0.0/16", 32, "blockSize 32"},
		{"172.16.0.0/16", 19, "blockSize 19"},
		{"10.0.0.0/24", 22, "blockSize 22"},
	}
	for _, tt := range tests {
		p := &IPPool{Spec: IPPoolSpec{CIDR: tt.cidr, BlockSize: tt.blockSize}}
		p.Name = "p"
		err := p.Validate()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s /%d: %v", tt.cidr, tt.blockSize, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s /%d: error %v, want one mentioning %q", tt.cidr, tt.blockSize, err, tt.wantErr)
		}
	}
}

func TestWriteTableMatchesTheSeedFormat(t *testing.T) {
	pools := []PoolUsage{{
		Name:  "default-ipv4-ippool",
		Usage: Usage{CIDR: netip.MustParsePrefix("172.16.0.0/16"), Total: 65536, InUse: 6},
		Blocks: []Usage{
			{CIDR: netip.MustParsePrefix("172.16.116.0/24"), Total: 256, InUse: 4},
			{CIDR: netip.MustParsePrefix("172.16.158.0/24"), Total: 256, InUse: 2},
		},
	}}
	var b strings.Builder
	if err := writeTable(&b, pools, true); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"GROUPING  CIDR             IPS TOTAL  IPS IN USE  IPS FREE\n" +
		"IP Pool   172.16.0.0/16    65536      6 (0%)      65530 (100%)\n" +
		"Block     172.16.116.0/24  256        4 (2%)      252 (98%)\n" +
		"Block     172.16.158.0/24  256        2 (1%)      254 (99%)\n"
	if b.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := writeTable(&b, pools, false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "Block") || !strings.Contains(b.String(), "IP Pool") {
		t.Fatalf("without --show-blocks:\n%s", b.String())
	}
}
