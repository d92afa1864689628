package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/dataplane/ipam/ipamtest"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

func TestMain(m *testing.M) { os.Exit(apitest.Run(m)) }

// newClient returns a datastore client of the test API server, with the
// CRDs installed.
func newClient(t *testing.T) *ipam.Client {
	t.Helper()
	srv := apitest.Get(t)
	ipamtest.InstallCRDs(t, srv.Config)
	c, err := ipam.NewClientForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newPool makes a throwaway pool for one test.
func newPool(t *testing.T, name, cidr string, blockSize int) *ipam.IPPool {
	t.Helper()
	return ipamtest.NewPool(t, apitest.Get(t).Config, name, cidr, blockSize)
}

func assign(t *testing.T, c *ipam.Client, pool *ipam.IPPool, node, handle string) netip.Addr {
	t.Helper()
	addr, err := c.Assign(context.Background(), pool, ipam.AssignArgs{Handle: handle, Node: node, Namespace: "default", Pod: "pod-" + handle})
	if err != nil {
		t.Fatalf("assigning %s on %s: %v", handle, node, err)
	}
	return addr
}

// poolBlocks returns the blocks of pool, by CIDR.
func poolBlocks(t *testing.T, c *ipam.Client, pool *ipam.IPPool) map[string]ipam.IPAMBlock {
	t.Helper()
	blocks, err := c.Blocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(pool.Spec.CIDR)
	out := map[string]ipam.IPAMBlock{}
	for _, b := range blocks {
		if cidr.Overlaps(netip.MustParsePrefix(b.Spec.CIDR)) {
			out[b.Spec.CIDR] = b
		}
	}
	return out
}

// podAllocations returns the pod addresses held in pool, by handle.
func podAllocations(t *testing.T, c *ipam.Client, pool *ipam.IPPool) map[string]netip.Addr {
	t.Helper()
	out := map[string]netip.Addr{}
	for _, b := range poolBlocks(t, c, pool) {
		prefix := netip.MustParsePrefix(b.Spec.CIDR)
		for _, a := range b.Spec.Allocations {
			if a.Kind == ipam.PodAddress {
				out[a.Handle] = addrAtOrdinal(prefix, a.Ordinal)
			}
		}
	}
	return out
}

func addrAtOrdinal(block netip.Prefix, ordinal int) netip.Addr {
	a := block.Addr()
	for range ordinal {
		a = a.Next()
	}
	return a
}

// handlesOf returns the handle objects of node.
func handlesOf(t *testing.T, c *ipam.Client, node string) map[string]ipam.IPAMHandle {
	t.Helper()
	all, err := c.Handles(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]ipam.IPAMHandle{}
	for _, h := range all {
		if h.Spec.Node == node {
			out[h.Spec.HandleID] = h
		}
	}
	return out
}

func TestCRDDefaultsAndValidation(t *testing.T) {
	newClient(t)
	dyn := dynamic.NewForConfigOrDie(apitest.Get(t).Config)
	pools := dyn.Resource(ipam.PoolResource)
	ctx := context.Background()

	empty := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "nettrace.dev/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "defaults"},
	}}
	created, err := pools.Create(ctx, empty, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating an IPPool with no spec: %v", err)
	}
	t.Cleanup(func() { _ = pools.Delete(ctx, "defaults", metav1.DeleteOptions{}) })
	spec, _, _ := unstructured.NestedMap(created.Object, "spec")
	if spec["cidr"] != "172.16.0.0/16" || spec["blockSize"] != int64(26) || spec["encapsulation"] != "ipip" {
		t.Fatalf("defaulted spec = %v, want 172.16.0.0/16, 26, ipip", spec)
	}
	if err := unstructured.SetNestedField(created.Object, int64(24), "spec", "blockSize"); err != nil {
		t.Fatal(err)
	}
	if _, err := pools.Update(ctx, created, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("changing blockSize: got %v, want Invalid (immutable)", err)
	}

	for _, bad := range []struct {
		cidr      string
		blockSize int64
		want      string
	}{
		{"172.16.0.1/16", 26, "network address"},
		{"172.16.0.0/33", 26, "IPv4 CIDR"},
		{"fd00::/64", 26, "IPv4 CIDR"},
		{"10.0.0.0/24", 22, "blockSize"},
		{"10.0.0.0/16", 32, "blockSize"},
	} {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "nettrace.dev/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "bad"},
			"spec": map[string]any{"cidr": bad.cidr, "blockSize": bad.blockSize},
		}}
		_, err := pools.Create(ctx, obj, metav1.CreateOptions{})
		if err == nil {
			_ = pools.Delete(ctx, "bad", metav1.DeleteOptions{})
		}
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("IPPool %s /%d: got %v, want Invalid mentioning %q", bad.cidr, bad.blockSize, err, bad.want)
		}
	}
}

func TestFindPoolByNameAndCIDR(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "find", "10.11.0.0/16", 24)
	for _, sel := range []string{"find", "10.11.0.0/16"} {
		got, err := c.FindPool(ctx, sel)
		if err != nil || got.Name != pool.Name {
			t.Errorf("FindPool(%q) = %v, %v", sel, got, err)
		}
	}
	for sel, want := range map[string]error{
		"missing":       ipam.ErrPoolNotFound,
		"10.12.0.0/16":  ipam.ErrPoolNotFound,
		"10.11.0.0/33":  ipam.ErrInvalidPool,
		"10.11.0.1/16":  ipam.ErrInvalidPool,
		"not-a-cidr/16": ipam.ErrInvalidPool,
	} {
		if _, err := c.FindPool(ctx, sel); !errors.Is(err, want) {
			t.Errorf("FindPool(%q) = %v, want %v", sel, err, want)
		}
	}
}

func TestAssignAndRelease(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "round-trip", "10.13.0.0/16", 24)

	first := assign(t, c, pool, "node-a", "c1")
	second := assign(t, c, pool, "node-a", "c2")
	blocks := poolBlocks(t, c, pool)
	if len(blocks) != 1 {
		t.Fatalf("node-a claimed %d blocks for 2 pods, want 1", len(blocks))
	}
	var block ipam.IPAMBlock
	for _, b := range blocks {
		block = b
	}
	prefix := netip.MustParsePrefix(block.Spec.CIDR)
	if block.Spec.Affinity != "host:node-a" || block.Name != ipam.BlockName(prefix) || block.Spec.Pool != "round-trip" {
		t.Fatalf("block = %s %+v", block.Name, block.Spec)
	}
	if first != addrAtOrdinal(prefix, 1) || second != addrAtOrdinal(prefix, 2) {
		t.Fatalf("assigned %s and %s, want ordinals 1 and 2 of %s (0 is the tunnel's)", first, second, prefix)
	}
	if again := assign(t, c, pool, "node-a", "c1"); again != first {
		t.Fatalf("assigning c1 again gave %s, want its address %s", again, first)
	}
	if held, ok, err := c.AddressOf(ctx, "c1"); err != nil || !ok || held != first {
		t.Fatalf("AddressOf(c1) = %s, %v, %v", held, ok, err)
	}
	h := handlesOf(t, c, "node-a")["c1"]
	if h.Spec.Block != block.Spec.CIDR || h.Spec.Ordinal != 1 {
		t.Fatalf("handle c1 = %+v", h.Spec)
	}

	released, err := c.Release(ctx, "c1")
	if err != nil || !slices.Equal(released, []netip.Addr{first}) {
		t.Fatalf("Release(c1) = %v, %v; want [%s]", released, err, first)
	}
	if _, ok, _ := c.AddressOf(ctx, "c1"); ok {
		t.Fatal("c1 still holds an address")
	}
	if _, ok := handlesOf(t, c, "node-a")["c1"]; ok {
		t.Fatal("the handle of c1 is still there")
	}
	free := poolBlocks(t, c, pool)[block.Spec.CIDR].Spec.Free
	if free[len(free)-1] != 1 {
		t.Fatalf("the released ordinal is not at the back of the free list: ...%v", free[len(free)-3:])
	}
	if released, err := c.Release(ctx, "c1"); err != nil || len(released) != 0 {
		t.Fatalf("releasing c1 twice = %v, %v", released, err)
	}
	if released, err := c.Release(ctx, "never-assigned"); err != nil || len(released) != 0 {
		t.Fatalf("releasing an unknown handle = %v, %v", released, err)
	}
	if third := assign(t, c, pool, "node-a", "c3"); third != addrAtOrdinal(prefix, 3) {
		t.Fatalf("c3 got %s, want the next address of the free list, not the one just released", third)
	}
}

func TestReleaseFindsAnAllocationWithoutHandle(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "no-handle", "10.14.0.0/16", 24)
	addr, err := c.TakeWithoutHandle(ctx, pool, ipam.AssignArgs{Handle: "killed", Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	released, err := c.Release(ctx, "killed")
	if err != nil || !slices.Equal(released, []netip.Addr{addr}) {
		t.Fatalf("Release = %v, %v; want [%s]", released, err, addr)
	}
	if n := len(podAllocations(t, c, pool)); n != 0 {
		t.Fatalf("%d pod addresses left", n)
	}
}

func TestTunnelAddress(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "tunnel", "10.15.0.0/27", 28)

	tunnel, err := c.EnsureTunnelAddress(ctx, pool, "node-t")
	if err != nil {
		t.Fatal(err)
	}
	blocks := poolBlocks(t, c, pool)
	if len(blocks) != 1 {
		t.Fatalf("%d blocks after the tunnel, want 1", len(blocks))
	}
	for cidr := range blocks {
		if tunnel != netip.MustParsePrefix(cidr).Addr() {
			t.Fatalf("tunnel address %s is not the first of block %s", tunnel, cidr)
		}
	}
	if again, err := c.EnsureTunnelAddress(ctx, pool, "node-t"); err != nil || again != tunnel {
		t.Fatalf("second EnsureTunnelAddress = %s, %v; want %s", again, err, tunnel)
	}
	// 15 pods fill the first /28 and the 16th claims the second block,
	// whose first address is reserved too; no pod gets a first address.
	var pods []netip.Addr
	for i := range 16 {
		pods = append(pods, assign(t, c, pool, "node-t", fmt.Sprintf("p%d", i)))
	}
	blocks = poolBlocks(t, c, pool)
	if len(blocks) != 2 {
		t.Fatalf("node-t has %d blocks, want 2", len(blocks))
	}
	for cidr := range blocks {
		if first := netip.MustParsePrefix(cidr).Addr(); slices.Contains(pods, first) {
			t.Fatalf("a pod got %s, the reserved first address of %s", first, cidr)
		}
	}
	if again, err := c.EnsureTunnelAddress(ctx, pool, "node-t"); err != nil || again != tunnel {
		t.Fatalf("EnsureTunnelAddress after a second block = %s, %v; want %s", again, err, tunnel)
	}
}

func TestClaimBorrowAndExhaust(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	// Two blocks of 16: one for each node, 15 pod addresses each.
	pool := newPool(t, "borrow", "10.16.0.0/27", 28)
	a0 := assign(t, c, pool, "node-a", "a0")
	b0 := assign(t, c, pool, "node-b", "b0")
	blocks := poolBlocks(t, c, pool)
	if len(blocks) != 2 {
		t.Fatalf("two nodes claimed %d blocks, want 2", len(blocks))
	}
	affinity := map[string]string{}
	for cidr, b := range blocks {
		affinity[b.Spec.Affinity] = cidr
	}
	blockA := netip.MustParsePrefix(affinity["host:node-a"])
	blockB := netip.MustParsePrefix(affinity["host:node-b"])
	if !blockA.Contains(a0) || !blockB.Contains(b0) {
		t.Fatalf("a0=%s in %s, b0=%s in %s: each node should use its own block", a0, blockA, b0, blockB)
	}
	for i := 1; i < 15; i++ {
		if addr := assign(t, c, pool, "node-a", fmt.Sprintf("a%d", i)); !blockA.Contains(addr) {
			t.Fatalf("a%d got %s outside node-a's block while it had room", i, addr)
		}
	}
	// node-a's block is full and no block is left to claim: it borrows.
	borrowed := assign(t, c, pool, "node-a", "a15")
	if !blockB.Contains(borrowed) {
		t.Fatalf("a15 got %s, want a borrowed address of node-b's block %s", borrowed, blockB)
	}
	for _, a := range poolBlocks(t, c, pool)[blockB.String()].Spec.Allocations {
		if a.Handle == "a15" && (a.Node != "node-a" || a.Pod != "pod-a15") {
			t.Fatalf("borrowed allocation = %+v, want node-a's", a)
		}
	}
	for i := 1; i < 14; i++ {
		assign(t, c, pool, "node-b", fmt.Sprintf("b%d", i))
	}
	_, err := c.Assign(ctx, pool, ipam.AssignArgs{Handle: "one-too-many", Node: "node-c"})
	if !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Fatalf("assigning in a full pool: %v, want ErrPoolExhausted", err)
	}
	if _, err := c.Release(ctx, "a3"); err != nil {
		t.Fatal(err)
	}
	if addr := assign(t, c, pool, "node-c", "after-release"); addr != addrAtOrdinal(blockA, 4) {
		t.Fatalf("after releasing a3 the pool gave %s, want a3's old address %s", addr, addrAtOrdinal(blockA, 4))
	}
}

// TestConcurrentAssigns races writers of three nodes for the same blocks
// without any lock: resourceVersion and create-if-absent must keep every
// address unique.
func TestConcurrentAssigns(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "race", "10.17.0.0/22", 26)
	const perNode = 12
	nodes := []string{"race-1", "race-2", "race-3"}

	var wg sync.WaitGroup
	errs := make(chan error, len(nodes)*perNode)
	for _, node := range nodes {
		for i := range perNode {
			wg.Go(func() {
				_, err := c.Assign(ctx, pool, ipam.AssignArgs{Handle: fmt.Sprintf("%s-%d", node, i), Node: node})
				errs <- err
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	held := podAllocations(t, c, pool)
	if len(held) != len(nodes)*perNode {
		t.Fatalf("%d pod addresses held, want %d", len(held), len(nodes)*perNode)
	}
	owner := map[netip.Addr]string{}
	for handle, addr := range held {
		if other, dup := owner[addr]; dup {
			t.Fatalf("%s given to both %s and %s", addr, other, handle)
		}
		owner[addr] = handle
		if got, ok, err := c.AddressOf(ctx, handle); err != nil || !ok || got != addr {
			t.Fatalf("AddressOf(%s) = %s, %v, %v; the block says %s", handle, got, ok, err, addr)
		}
	}
	for _, b := range poolBlocks(t, c, pool) {
		node := strings.TrimPrefix(b.Spec.Affinity, "host:")
		for _, a := range b.Spec.Allocations {
			if a.Kind == ipam.PodAddress && a.Node != node {
				t.Errorf("%s borrowed from %s's block %s while the pool had free blocks", a.Handle, node, b.Spec.CIDR)
			}
		}
	}

	for handle := range held {
		wg.Go(func() {
			if _, err := c.Release(ctx, handle); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if left := podAllocations(t, c, pool); len(left) != 0 {
		t.Fatalf("%d addresses left after releasing all", len(left))
	}
}

func TestReleaseExcept(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "gc", "10.18.0.0/16", 24)
	keep := assign(t, c, pool, "gc-a", "keep")
	stale := assign(t, c, pool, "gc-a", "stale")
	other := assign(t, c, pool, "gc-b", "other-node")
	// The remains of ADDs killed half-way: an allocation without its
	// handle, and a handle without its allocation.
	orphan, err := c.TakeWithoutHandle(ctx, pool, ipam.AssignArgs{Handle: "orphan", Node: "gc-a"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.CreateHandle(ctx, &ipam.IPAMHandle{
		ObjectMeta: metav1.ObjectMeta{Name: "dangling"},
		Spec:       ipam.IPAMHandleSpec{HandleID: "dangling", Block: "10.18.250.0/24", Ordinal: 7, Node: "gc-a"},
	})
	if err != nil {
		t.Fatal(err)
	}

	released, err := c.ReleaseExcept(ctx, "gc-a", func(h string) bool { return h == "keep" })
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(released, netip.Addr.Compare)
	want := []netip.Addr{stale, orphan}
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(released, want) {
		t.Fatalf("released %v, want %v", released, want)
	}
	held := podAllocations(t, c, pool)
	if len(held) != 2 || held["keep"] != keep || held["other-node"] != other {
		t.Fatalf("left %v, want keep=%s and other-node=%s", held, keep, other)
	}
	handles := handlesOf(t, c, "gc-a")
	if len(handles) != 1 || handles["keep"].Spec.HandleID != "keep" {
		t.Fatalf("handles of gc-a left: %v, want only keep", handles)
	}
}

func TestReleaseEmptyBlocks(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "empty", "10.19.0.0/26", 28)
	tunnel, err := c.EnsureTunnelAddress(ctx, pool, "node-e")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 16 { // fills the tunnel's block, then one address of a second
		assign(t, c, pool, "node-e", fmt.Sprintf("e%d", i))
	}
	for i := range 15 { // frees the tunnel's block of pods
		if _, err := c.Release(ctx, fmt.Sprintf("e%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if released, err := c.ReleaseEmptyBlocks(ctx, "node-e"); err != nil || len(released) != 0 {
		t.Fatalf("ReleaseEmptyBlocks = %v, %v; want nothing: the tunnel block stays, the other holds e15", released, err)
	}
	assign(t, c, pool, "node-e", "e16") // lands in the block with room: the second
	assign(t, c, pool, "node-e", "e17")
	for _, h := range []string{"e15", "e16", "e17"} {
		if _, err := c.Release(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	released, err := c.ReleaseEmptyBlocks(ctx, "node-e")
	if err != nil || len(released) != 1 || released[0].Contains(tunnel) {
		t.Fatalf("ReleaseEmptyBlocks = %v, %v; want the one block that does not hold the tunnel %s", released, err, tunnel)
	}
	if n := len(poolBlocks(t, c, pool)); n != 1 {
		t.Fatalf("%d blocks left, want 1", n)
	}
	if again, err := c.EnsureTunnelAddress(ctx, pool, "node-e"); err != nil || again != tunnel {
		t.Fatalf("tunnel address after the release = %s, %v; want %s", again, err, tunnel)
	}
}

func TestLeakCollector(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "leak", "10.20.0.0/16", 24)
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	c.SetClock(func() time.Time { return now })

	gone := assign(t, c, pool, "node-l", "gone")      // its pod was deleted
	alive := assign(t, c, pool, "node-l", "alive")    // its pod runs with this address
	moved := assign(t, c, pool, "node-l", "moved")    // its pod runs with another address
	pending := assign(t, c, pool, "node-l", "coming") // its pod has no address yet
	pods := map[string][]netip.Addr{
		"pod-alive":  {alive},
		"pod-moved":  {netip.MustParseAddr("10.99.0.1")},
		"pod-coming": nil,
	}
	var lookups int
	g := &ipam.LeakCollector{
		Client: c,
		Grace:  time.Minute,
		Lookup: func(_ context.Context, namespace, name string) ([]netip.Addr, bool, error) {
			lookups++
			ips, ok := pods[name]
			return ips, ok, nil
		},
	}
	if leaks, err := g.Collect(ctx); err != nil || len(leaks) != 0 {
		t.Fatalf("first Collect released %v, %v; nothing is past its grace yet", leaks, err)
	}
	if lookups != 4 {
		t.Fatalf("looked up %d pods, want 4", lookups)
	}
	now = now.Add(30 * time.Second)
	if leaks, err := g.Collect(ctx); err != nil || len(leaks) != 0 {
		t.Fatalf("Collect within the grace released %v, %v", leaks, err)
	}
	now = now.Add(31 * time.Second)
	leaks, err := g.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]netip.Addr{}
	for _, l := range leaks {
		got[l.Handle] = l.Addr
	}
	if len(got) != 2 || got["gone"] != gone || got["moved"] != moved {
		t.Fatalf("released %v, want gone=%s and moved=%s", leaks, gone, moved)
	}
	held := podAllocations(t, c, pool)
	if len(held) != 2 || held["alive"] != alive || held["coming"] != pending {
		t.Fatalf("left %v, want alive and coming", held)
	}
	if _, ok := handlesOf(t, c, "node-l")["gone"]; ok {
		t.Fatal("the handle of a released leak is still there")
	}
}

func TestShow(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	pool := newPool(t, "show", "10.21.0.0/16", 24)
	for i := range 3 {
		assign(t, c, pool, "node-s", fmt.Sprintf("s%d", i))
	}
	var block string
	for cidr := range poolBlocks(t, c, pool) {
		block = cidr
	}
	var out strings.Builder
	if err := ipam.Show(ctx, c, &out, true); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(""+
		"GROUPING  CIDR            IPS TOTAL  IPS IN USE  IPS FREE\n"+
		"IP Pool   10.21.0.0/16    65536      4 (0%%)      65532 (100%%)\n"+
		"Block     %-14s  256        4 (2%%)      252 (98%%)\n", block)
	if out.String() != want {
		t.Fatalf("ipam show --show-blocks:\n%s\nwant:\n%s", out.String(), want)
	}
}
