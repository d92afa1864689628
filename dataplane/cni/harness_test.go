package cni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/internal/apitest"
	"github.com/kubectl-nettrace/nettrace/internal/testns"
)

// pluginDir holds the nettrace-cni binary built for this package's tests.
var pluginDir string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "nettrace-cni-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "nettrace-cni"),
			"github.com/kubectl-nettrace/nettrace/cmd/nettrace-cni").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building nettrace-cni: %v\n%s", err, out)
			return 1
		}
		pluginDir = dir
		// The node lock files are removed by each test; their directory
		// goes too unless something else on the host uses it.
		defer os.Remove(lockDir)
		return apitest.Run(m)
	}()
	os.Exit(code)
}

// specVersions are the CNI versions the plugin claims.
var specVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// testNode is a node of the test cluster: a netns with an uplink and a
// default route, from which the API server is reachable on loopback.
type testNode struct {
	name       string
	ns         ns.NetNS
	kubeconfig string
	cni        *libcni.CNIConfig
}

// uplinkMTU is the MTU of the test nodes' default-route interface.
const uplinkMTU = 1500

func newNode(t testing.TB) *testNode {
	t.Helper()
	srv := apitest.Get(t)
	nodeNS := newNetns(t)
	t.Cleanup(func() { removeNetns(t, nodeNS) })
	err := nodeNS.Do(func(ns.NetNS) error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// A veth pair stands for the node's NIC (the kernel has no dummy
		// interfaces): its far end is up so that it has carrier.
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = "uplink0", uplinkMTU
		uplink := &netlink.Veth{LinkAttrs: attrs, PeerName: "uplink0p"}
		if err := netlink.LinkAdd(uplink); err != nil {
			return err
		}
		if err := netlink.AddrAdd(uplink, &netlink.Addr{IPNet: mustCIDR("192.0.2.10/24")}); err != nil {
			return err
		}
		for _, name := range []string{"uplink0", "uplink0p"} {
			l, err := netlinksafe.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: uplink.Attrs().Index, Gw: net.ParseIP("192.0.2.1")})
	})
	if err != nil {
		t.Fatalf("setting up the node netns: %v", err)
	}
	name := "node-" + randomHex(4)
	t.Cleanup(func() { _ = os.Remove(lockPath(name)) })
	return &testNode{
		name:       name,
		ns:         nodeNS,
		kubeconfig: srv.KubeconfigIn(t, nodeNS.Path()),
		cni:        newCNIConfig(t),
	}
}

// newCNIConfig is a libcni runtime with a cache of its own, running the
// plugin under test.
func newCNIConfig(t testing.TB) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), nil)
}

// confList is the network configuration of the node for version and pool,
// with extra fields merged into the plugin's.
func (n *testNode) confList(t testing.TB, version, pool string, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	plugin := map[string]any{"type": "nettrace-cni", "kubeconfig": n.kubeconfig, "nodename": n.name, "pool": pool}
	for k, v := range extra {
		plugin[k] = v
	}
	data, err := json.Marshal(map[string]any{"cniVersion": version, "name": "nettrace", "plugins": []any{plugin}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// do runs f in the node's netns, so that the plugins it executes run there.
func (n *testNode) do(f func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return f() })
}

func (n *testNode) add(list *libcni.NetworkConfigList, p *testPod) (types.Result, error) {
	var res types.Result
	err := n.do(func() error {
		var err error
		res, err = n.cni.AddNetworkList(context.Background(), list, p.rt())
		return err
	})
	return res, err
}

func (n *testNode) check(list *libcni.NetworkConfigList, p *testPod) error {
	return n.do(func() error { return n.cni.CheckNetworkList(context.Background(), list, p.rt()) })
}

func (n *testNode) del(list *libcni.NetworkConfigList, p *testPod) error {
	return n.do(func() error { return n.cni.DelNetworkList(context.Background(), list, p.rt()) })
}

func (n *testNode) gc(list *libcni.NetworkConfigList, valid ...*testPod) error {
	args := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.id, IfName: "eth0"})
	}
	return n.do(func() error { return n.cni.GCNetworkList(context.Background(), list, args) })
}

func (n *testNode) status(list *libcni.NetworkConfigList) error {
	return n.do(func() error { return n.cni.GetStatusNetworkList(context.Background(), list) })
}

// caliLinks lists the host-side veths in the node's netns.
func (n *testNode) caliLinks(t testing.TB) []string {
	t.Helper()
	var names []string
	err := n.do(func() error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, hostVethPrefix) {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// hostRoutes lists the destinations the node routes to cali veths.
func (n *testNode) hostRoutes(t testing.TB) map[netip.Addr]string {
	t.Helper()
	routes := map[netip.Addr]string{}
	err := n.do(func() error {
		list, err := netlinksafe.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range list {
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil || r.Dst == nil || !strings.HasPrefix(link.Attrs().Name, hostVethPrefix) {
				continue
			}
			addr, _ := netip.AddrFromSlice(r.Dst.IP.To4())
			routes[addr] = link.Attrs().Name
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return routes
}

// testPod is a pod sandbox: its netns and its identity.
type testPod struct {
	ns        ns.NetNS
	id        string
	namespace string
	name      string
	closeOnce sync.Once
}

func newPod(t testing.TB, name string) *testPod {
	t.Helper()
	p := &testPod{ns: newNetns(t), id: randomHex(32), namespace: "default", name: name}
	t.Cleanup(func() { p.remove(t) })
	return p
}

// remove deletes the pod's netns, as the runtime does when the sandbox goes.
func (p *testPod) remove(t testing.TB) {
	p.closeOnce.Do(func() { removeNetns(t, p.ns) })
}

// run runs a command in the pod's netns and returns its output.
func (p *testPod) run(t testing.TB, argv ...string) string {
	t.Helper()
	return runIn(t, p.ns, argv...)
}

func (p *testPod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.id,
		NetNS:       p.ns.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.namespace}, {"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.id},
		},
	}
}

func (p *testPod) hostVeth() string { return hostVethName(p.namespace, p.name) }

// runIn runs a command in netns n and returns its output.
func runIn(t testing.TB, n ns.NetNS, argv ...string) string {
	t.Helper()
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command(argv[0], argv[1:]...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%v in %s: %v\n%s", argv, n.Path(), err, out)
	}
	return string(out)
}

// newNetns makes a named netns (see package testns).
func newNetns(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testns.Make("ntcni-")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// removeNetns removes a netns made by newNetns.
func removeNetns(t testing.TB, n ns.NetNS) {
	if err := testns.Remove(n); err != nil {
		t.Error(err)
	}
}

// datastore is a client of the test API server, from the test's netns.
func datastore(t testing.TB) *ipam.Client {
	t.Helper()
	c, err := ipam.NewClientForConfig(apitest.Get(t).Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// podAddresses lists the pod allocations inside pool, by handle.
func podAddresses(t testing.TB, c *ipam.Client, pool string) map[string]netip.Addr {
	t.Helper()
	blocks, err := c.Blocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(pool)
	out := map[string]netip.Addr{}
	for _, b := range blocks {
		prefix := netip.MustParsePrefix(b.Spec.CIDR)
		if !cidr.Overlaps(prefix) {
			continue
		}
		for _, a := range b.Spec.Allocations {
			if a.Kind == ipam.PodAddress {
				addr := prefix.Addr()
				for range a.Ordinal {
					addr = addr.Next()
				}
				out[a.Handle] = addr
			}
		}
	}
	return out
}

// asCurrent converts an ADD result, of whatever spec version, to 1.1.0.
func asCurrent(t testing.TB, res types.Result) *current.Result {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("converting the result %v: %v", res, err)
	}
	return cur
}

// resultAddr is the pod address of an ADD result.
func resultAddr(t testing.TB, res types.Result) netip.Addr {
	t.Helper()
	cur := asCurrent(t, res)
	if len(cur.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %v", len(cur.IPs), cur)
	}
	addr, ok := netip.AddrFromSlice(cur.IPs[0].Address.IP.To4())
	if !ok {
		t.Fatalf("result IP %v is not IPv4", cur.IPs[0].Address)
	}
	return addr
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func mustCIDR(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}
