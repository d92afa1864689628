package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
)

// PluginInfo lists the CNI spec versions the plugin speaks.
var PluginInfo = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is what the plugin prints when run without CNI_COMMAND.
const About = "nettrace-cni: Calico-like pod networking with block IPAM in the Kubernetes API"

// Funcs are the plugin's commands, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
}

// Timeouts of one command, and of one request to the API server.
const (
	commandTimeout = 2 * time.Minute
	statusTimeout  = 10 * time.Second
	requestTimeout = 15 * time.Second
)

// datastore connects to the IPAM datastore of the configuration.
func (c *NetConf) datastore() (*ipam.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("loading kubeconfig %s: %v", c.Kubeconfig, err), "")
	}
	cfg.Timeout = requestTimeout
	cfg.UserAgent = "nettrace-cni"
	return ipam.NewClientForConfig(cfg)
}

// connectLocked connects to the IPAM datastore and takes the node's lock,
// which unlock gives back: what changes the node's addresses holds it.
func (c *NetConf) connectLocked(ctx context.Context) (store *ipam.Client, unlock func(), err error) {
	if store, err = c.connect(ctx); err != nil {
		return nil, nil, err
	}
	if unlock, err = lockNode(ctx, c.NodeName); err != nil {
		return nil, nil, err
	}
	return store, unlock, nil
}

// connect returns a client of the datastore whose connection is up. When
// many pods start at once the node is busy and the API server can be slow to
// complete the TLS handshake, so the first request is retried while it times
// out, until ctx ends; a refused connection fails at once. Later requests
// reuse the connection.
func (c *NetConf) connect(ctx context.Context) (*ipam.Client, error) {
	store, err := c.datastore()
	if err != nil {
		return nil, err
	}
	wait := 100 * time.Millisecond
	for {
		err := store.Ping(ctx)
		if err == nil {
			return store, nil
		}
		if !timedOut(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// cmdAdd assigns the pod an address and plumbs its veth. A failure leaves
// nothing behind: the veth is removed and the address given back.
func cmdAdd(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	pod, err := loadPodArgs(args.Args)
	if err != nil {
		return err
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("opening the pod netns %s: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	mtu, err := conf.podMTU()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	store, err := conf.connect(ctx)
	if err != nil {
		return cniError(err)
	}
	pool, err := store.FindPool(ctx, conf.Pool)
	if err != nil {
		return cniError(err)
	}
	unlock, err := lockNode(ctx, conf.NodeName)
	if err != nil {
		return cniError(err)
	}
	defer unlock()

	addr, err := store.Assign(ctx, pool, ipam.AssignArgs{
		Handle: args.ContainerID, Node: conf.NodeName, Namespace: pod.Namespace, Pod: pod.Name,
	})
	if err != nil {
		return cniError(err)
	}
	link, err := plumbPod(podNS, args.IfName, hostVethName(pod.Namespace, pod.Name), addr, mtu)
	if err != nil {
		if _, releaseErr := store.Release(ctx, args.ContainerID); releaseErr != nil {
			err = errors.Join(err, fmt.Errorf("giving back %s: %w", addr, releaseErr))
		}
		return cniError(err)
	}
	return types.PrintResult(newResult(args, link, addr), conf.CNIVersion)
}

// podMTU is the configured MTU, or the default route's less the
// encapsulation's overhead.
func (c *NetConf) podMTU() (int, error) {
	if c.MTU != 0 {
		return c.MTU, nil
	}
	mtu, err := defaultRouteMTU()
	if err != nil {
		return 0, err
	}
	return mtu - encapOverhead(c.Encapsulation), nil
}

// newResult is the ADD result: the host veth, the pod's interface, its
// address and its default route.
func newResult(args *skel.CmdArgs, link podLink, addr netip.Addr) *current.Result {
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: link.hostName, Mac: hostVethMAC.String()},
			{Name: args.IfName, Mac: link.podMAC.String(), Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   *hostPrefix(addr),
			Gateway:   podGateway,
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: podGateway}},
	}
}

// cmdDel removes the pod's veth and gives its address back. It succeeds for
// a container it does not know, and when run twice.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if args.Netns != "" {
		if err := deletePodVeth(args.Netns, args.IfName); err != nil {
			return err
		}
	}
	store, unlock, err := conf.connectLocked(ctx)
	if err != nil {
		return cniError(err)
	}
	defer unlock()
	_, err = store.Release(ctx, args.ContainerID)
	return cniError(err)
}

// cmdGC releases the addresses assigned on this node to containers that are
// not among the valid attachments, and removes what is left of their veths.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	keep, ok := conf.validAttachments()
	if !ok {
		// Without the list every attachment would look stale.
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	store, unlock, err := conf.connectLocked(ctx)
	if err != nil {
		return cniError(err)
	}
	defer unlock()
	released, err := store.ReleaseExcept(ctx, conf.NodeName, func(handle string) bool { return keep[handle] })
	for _, addr := range released {
		if vethErr := deleteVethRoutedTo(addr); vethErr != nil {
			err = errors.Join(err, vethErr)
		}
	}
	return cniError(err)
}

// cmdStatus reports whether the plugin can serve ADD: the datastore answers
// and the pool exists.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	store, err := conf.datastore()
	if err != nil {
		return err
	}
	if _, err := store.FindPool(ctx, conf.Pool); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("the IPAM datastore cannot serve ADD: %v", err), "")
	}
	return nil
}
