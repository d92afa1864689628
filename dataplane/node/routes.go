package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/dataplane/tunnel"
)

// resyncInterval is how often routes are reconciled even without a change,
// which also repairs routes someone removed.
const resyncInterval = 30 * time.Second

// runRoutes keeps the node's routes in line with the IPAM blocks and the
// nodes that own them, until ctx ends.
func runRoutes(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, dp *tunnel.Dataplane, log *slog.Logger) error {
	nodeFactory := informers.NewSharedInformerFactory(client, 0)
	nodes := nodeFactory.Core().V1().Nodes()
	blockFactory := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	blocks := blockFactory.ForResource(ipam.BlockResource)

	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	if _, err := nodes.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	if _, err := blocks.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	nodeFactory.Start(ctx.Done())
	blockFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced, blocks.Informer().HasSynced) {
		return fmt.Errorf("waiting for the node and block caches: %w", ctx.Err())
	}
	tick := time.NewTicker(resyncInterval)
	defer tick.Stop()
	for {
		want := desiredBlocks(nodes.Lister().List, blocks.Informer().GetStore().List(), log)
		if err := dp.Sync(want); err != nil {
			log.Error("syncing routes", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			// Let a burst of changes settle into one sync.
			time.Sleep(50 * time.Millisecond)
		case <-tick.C:
		}
	}
}

// desiredBlocks joins each claimed block with the address (and VTEP) of the
// node that owns it. Blocks of unknown nodes are left out: their routes go.
func desiredBlocks(listNodes func(labels.Selector) ([]*corev1.Node, error), objs []any, log *slog.Logger) []tunnel.Block {
	all, err := listNodes(labels.Everything())
	if err != nil {
		log.Error("listing nodes", "err", err)
		return nil
	}
	byName := map[string]*corev1.Node{}
	for _, n := range all {
		byName[n.Name] = n
	}
	var out []tunnel.Block
	for _, obj := range objs {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		var block ipam.IPAMBlock
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &block); err != nil {
			log.Error("decoding IPAM block", "name", u.GetName(), "err", err)
			continue
		}
		owner, ok := ownerOf(block.Spec.Affinity)
		if !ok {
			continue
		}
		n := byName[owner]
		if n == nil {
			continue
		}
		cidr, err := netip.ParsePrefix(block.Spec.CIDR)
		if err != nil {
			continue
		}
		b := tunnel.Block{CIDR: cidr, Node: owner, NodeIP: internalIP(n)}
		if mac, err := net.ParseMAC(n.Annotations[AnnotationVTEPMAC]); err == nil {
			b.VTEPMAC = mac
		}
		if ip, err := netip.ParseAddr(n.Annotations[AnnotationTunnelAddress]); err == nil {
			b.VTEPIP = ip
		}
		if b.NodeIP.IsValid() {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CIDR.Addr().Less(out[j].CIDR.Addr()) })
	return out
}

// ownerOf returns the node of a "host:<node>" affinity.
func ownerOf(affinity string) (string, bool) {
	const prefix = "host:"
	if len(affinity) <= len(prefix) || affinity[:len(prefix)] != prefix {
		return "", false
	}
	return affinity[len(prefix):], true
}

// internalIP is the node's InternalIP address.
func internalIP(n *corev1.Node) netip.Addr {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
				return ip
			}
		}
	}
	return netip.Addr{}
}

// publishNode records the node's tunnel address, VTEP MAC and underlay
// address as annotations, for the other nodes' route programming.
func publishNode(ctx context.Context, client kubernetes.Interface, cfg Config, tunnelAddr netip.Addr, dp *tunnel.Dataplane) error {
	annotations := map[string]string{
		AnnotationTunnelAddress: tunnelAddr.String(),
		AnnotationNodeAddress:   cfg.NodeIP.String(),
	}
	if mac := dp.VTEPMAC(); mac != nil {
		annotations[AnnotationVTEPMAC] = mac.String()
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	// The node runtime registers the Node; wait for it.
	for {
		_, err = client.CoreV1().Nodes().Patch(ctx, cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("annotating node %s: %w", cfg.NodeName, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// defaultRouteInterface is the name of the interface of the default route.
func defaultRouteInterface() (string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("finding the default route's interface: %w", err)
			}
			return link.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("no default route: give the underlay interface with --interface")
}
