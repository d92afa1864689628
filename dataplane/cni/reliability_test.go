package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/dataplane/ipam/ipamtest"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

// TestConcurrentAddsOnThreeNodes runs 200 ADDs at once, spread over three
// nodes, and then 200 DELs at once.
func TestConcurrentAddsOnThreeNodes(t *testing.T) {
	const pods = 200
	const pool = "10.43.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "concurrent", pool, 24)
	nodes := []*testNode{newNode(t), newNode(t), newNode(t)}
	lists := make([]*libcni.NetworkConfigList, len(nodes))
	for i, n := range nodes {
		lists[i] = n.confList(t, "1.1.0", pool, nil)
	}
	sandboxes := make([]*testPod, pods)
	for i := range sandboxes {
		sandboxes[i] = newPod(t, fmt.Sprintf("pod-%d", i))
	}

	results := make([]types.Result, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i, p := range sandboxes {
		wg.Go(func() { results[i], errs[i] = nodes[i%3].add(lists[i%3], p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD of pod %d on %s: %v", i, nodes[i%3].name, err)
		}
	}

	c := datastore(t)
	held := podAddresses(t, c, pool)
	owner := map[netip.Addr]string{}
	for i, res := range results {
		addr := resultAddr(t, res)
		if other, dup := owner[addr]; dup {
			t.Fatalf("%s given to %s and %s", addr, other, sandboxes[i].name)
		}
		owner[addr] = sandboxes[i].name
		if held[sandboxes[i].id] != addr {
			t.Fatalf("pod %d got %s, the datastore says %s", i, addr, held[sandboxes[i].id])
		}
	}
	if len(held) != pods {
		t.Fatalf("the datastore holds %d pod addresses, want %d", len(held), pods)
	}
	blocks, err := c.Blocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		routes := n.hostRoutes(t)
		if len(routes) != (pods-i+2)/3 {
			t.Errorf("%s routes %d pods, want %d", n.name, len(routes), (pods-i+2)/3)
		}
		for j := i; j < pods; j += 3 {
			addr := resultAddr(t, results[j])
			if routes[addr] != sandboxes[j].hostVeth() {
				t.Errorf("%s routes %s to %q, want %s", n.name, addr, routes[addr], sandboxes[j].hostVeth())
			}
			if b := blockOf(blocks, addr); b == nil || b.Spec.Affinity != ipam.Affinity(n.name) {
				t.Errorf("%s's pod got %s from a block not of its own", n.name, addr)
			}
		}
	}

	for i, p := range sandboxes {
		wg.Go(func() { errs[i] = nodes[i%3].del(lists[i%3], p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL of pod %d: %v", i, err)
		}
	}
	if left := podAddresses(t, c, pool); len(left) != 0 {
		t.Fatalf("%d addresses left after DEL", len(left))
	}
	for _, n := range nodes {
		if links := n.caliLinks(t); len(links) != 0 {
			t.Fatalf("%s has %d veths left", n.name, len(links))
		}
	}
}

// blockOf finds the block holding addr.
func blockOf(blocks []ipam.IPAMBlock, addr netip.Addr) *ipam.IPAMBlock {
	for i := range blocks {
		if netip.MustParsePrefix(blocks[i].Spec.CIDR).Contains(addr) {
			return &blocks[i]
		}
	}
	return nil
}

// TestKillMidAddThenGC kills the plugin as soon as its address shows up in
// the datastore, before the ADD can finish, and checks that GC then leaves
// no address, handle, route or veth behind.
func TestKillMidAddThenGC(t *testing.T) {
	const pool = "10.44.0.0/16"
	ipamtest.NewPool(t, apitest.Get(t).Config, "kill", pool, 24)
	node := newNode(t)
	c := datastore(t)
	stdin, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": "nettrace", "type": "nettrace-cni",
		"kubeconfig": node.kubeconfig, "nodename": node.name, "pool": pool,
	})
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := dynamic.NewForConfig(apitest.Get(t).Config)
	if err != nil {
		t.Fatal(err)
	}

	var pods []*testPod
	killed := 0
	for attempt := range 6 {
		p := newPod(t, fmt.Sprintf("killed-%d", attempt))
		pods = append(pods, p)
		w, err := blocks.Resource(ipam.BlockResource).Watch(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(pluginDir, "nettrace-cni"))
		cmd.Stdin = strings.NewReader(string(stdin))
		cmd.Env = append(os.Environ(),
			"CNI_COMMAND=ADD", "CNI_CONTAINERID="+p.id, "CNI_NETNS="+p.ns.Path(), "CNI_IFNAME=eth0",
			"CNI_PATH="+pluginDir, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME="+p.name)
		if err := node.do(cmd.Start); err != nil {
			t.Fatal(err)
		}
		allocated := waitForAllocation(t, w, p.id)
		_ = cmd.Process.Kill()
		w.Stop()
		err = cmd.Wait()
		status, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if allocated && status.Signaled() {
			killed++
		} else if err != nil && !status.Signaled() {
			t.Fatalf("ADD %d failed by itself: %v", attempt, err)
		}
	}
	if killed == 0 {
		t.Fatal("no kill landed between the allocation and the end of ADD")
	}
	t.Logf("%d of %d ADDs killed after their address was allocated", killed, len(pods))

	// The runtime knows none of these sandboxes any more.
	if err := node.gc(node.confList(t, "1.1.0", pool, nil)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if held := podAddresses(t, c, pool); len(held) != 0 {
		t.Fatalf("GC left addresses: %v", held)
	}
	handles, err := c.Handles(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range handles {
		if h.Spec.Node == node.name {
			t.Fatalf("GC left handle %+v", h.Spec)
		}
	}
	if routes := node.hostRoutes(t); len(routes) != 0 {
		t.Fatalf("GC left routes: %v", routes)
	}
	// A veth killed before it got its route goes with the sandbox's netns.
	for _, p := range pods {
		p.remove(t)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(node.caliLinks(t)) != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if links := node.caliLinks(t); len(links) != 0 {
		t.Fatalf("veths left after the sandboxes went: %v", links)
	}
}

// waitForAllocation waits until a block records an allocation for handle,
// and reports whether it did within the time limit.
func waitForAllocation(t *testing.T, w watch.Interface, handle string) bool {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch of IPAMBlocks ended")
			}
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			var block ipam.IPAMBlock
			u, ok := ev.Object.(runtime.Unstructured)
			if !ok || runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &block) != nil {
				continue
			}
			for _, a := range block.Spec.Allocations {
				if a.Handle == handle {
					return true
				}
			}
		case <-timeout:
			return false
		}
	}
}
