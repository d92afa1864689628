// Package node is the reference dataplane's node daemon (bin/nettrace-node),
// the counterpart of calico-node plus kube-proxy. On one node it:
//   - reserves the node's tunnel address in the block IPAM and publishes it,
//     with the VXLAN VTEP MAC, as annotations of the Node;
//   - programs a route per IPAM block (dataplane/tunnel): a blackhole for its
//     own blocks, the tunnel or the underlay for the blocks of other nodes;
//   - installs the host rules pods need (hostrules.go): forwarding for the
//     cali* veths and NAT of pod traffic that leaves the pool;
//   - runs the service NAT (dataplane/servicenat) unless the real kube-proxy
//     does that job;
//   - hands out LoadBalancer addresses and answers ARP for those this node
//     announces (dataplane/loadbalancer, MetalLB's layer-2 mode);
//   - reclaims IPAM addresses leaked by pods that are gone.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
	"github.com/kubectl-nettrace/nettrace/dataplane/loadbalancer"
	"github.com/kubectl-nettrace/nettrace/dataplane/servicenat"
	"github.com/kubectl-nettrace/nettrace/dataplane/tunnel"
)

// Annotations the daemon publishes on its Node, as calico-node publishes
// projectcalico.org/IPv4IPIPTunnelAddr and friends.
const (
	AnnotationTunnelAddress = "nettrace.dev/ipv4-tunnel-address"
	AnnotationVTEPMAC       = "nettrace.dev/vxlan-tunnel-mac"
	AnnotationNodeAddress   = "nettrace.dev/ipv4-address"
)

// Config describes the node the daemon runs on.
type Config struct {
	NodeName string
	NodeIP   netip.Addr
	// Interface is the underlay NIC; empty means the interface of the
	// default route.
	Interface string
	// Pool names the IPPool whose blocks are routed.
	Pool string
	// ClusterCIDR is the pod pool, for the service NAT's masquerade rule.
	ClusterCIDR netip.Prefix
	// ServiceNAT runs the reference service NAT; false leaves services to
	// the real kube-proxy.
	ServiceNAT bool
	// LBPool is the range of underlay addresses given to LoadBalancer
	// services; the zero prefix turns the load balancer off.
	LBPool netip.Prefix
	// LeakGrace is how long an address of a vanished pod is kept before it
	// is reclaimed.
	LeakGrace time.Duration
	Logger    *slog.Logger
}

// Run runs the daemon until ctx ends.
func Run(ctx context.Context, cfg Config, rc *rest.Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	// Built-in objects travel as protobuf, as kube-proxy's do: smaller and
	// cheaper to decode on large clusters. The IPAM's custom resources have
	// only JSON, which the dynamic client speaks.
	typed := rest.CopyConfig(rc)
	typed.ContentType = "application/vnd.kubernetes.protobuf"
	typed.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(typed)
	if err != nil {
		return fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("creating the dynamic client: %w", err)
	}
	store := ipam.NewClient(dyn)
	pool, err := waitForPool(ctx, store, cfg.Pool, log)
	if err != nil {
		return err
	}
	tunnelAddr, err := store.EnsureTunnelAddress(ctx, pool, cfg.NodeName)
	if err != nil {
		return fmt.Errorf("reserving the tunnel address: %w", err)
	}
	iface := cfg.Interface
	if iface == "" {
		if iface, err = defaultRouteInterface(); err != nil {
			return err
		}
	}
	mode := tunnel.Mode(pool.Spec.Encapsulation)
	dp, err := tunnel.New(tunnel.Node{Name: cfg.NodeName, IP: cfg.NodeIP, Interface: iface, TunnelAddr: tunnelAddr, Mode: mode})
	if err != nil {
		return fmt.Errorf("setting up %s between nodes: %w", mode, err)
	}
	defer dp.Close()
	log.Info("node dataplane ready", "node", cfg.NodeName, "tunnelAddress", tunnelAddr, "encapsulation", mode, "userspaceIPIP", dp.Userspace())
	if err := publishNode(ctx, client, cfg, tunnelAddr, dp); err != nil {
		return err
	}
	poolCIDR, err := netip.ParsePrefix(pool.Spec.CIDR)
	if err != nil {
		return fmt.Errorf("pool %s: %w", pool.Name, err)
	}
	if err := installHostRules(ctx, poolCIDR); err != nil {
		return err
	}

	errc := make(chan error, 5)
	go func() { errc <- runRoutes(ctx, client, dyn, dp, log) }()
	go func() { errc <- runLeakCollector(ctx, client, store, cfg, log) }()
	if cfg.ServiceNAT {
		proxier, err := servicenat.New(client, cfg.NodeName, []netip.Addr{cfg.NodeIP}, servicenat.Options{
			ClusterCIDR: cfg.ClusterCIDR,
			Logger:      log,
		})
		if err != nil {
			return err
		}
		go func() { errc <- proxier.Run(ctx) }()
	}
	if cfg.LBPool.IsValid() {
		controller, err := loadbalancer.NewController(client, cfg.LBPool, loadbalancer.ControllerOptions{Identity: cfg.NodeName, Logger: log})
		if err != nil {
			return err
		}
		speaker, err := loadbalancer.NewSpeaker(client, cfg.NodeName, iface, loadbalancer.SpeakerOptions{Pool: cfg.LBPool, Logger: log})
		if err != nil {
			return err
		}
		go func() { errc <- controller.Run(ctx) }()
		go func() { errc <- speaker.Run(ctx) }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

// waitForPool waits until the pool exists: the lab creates it after the
// CRDs, and a node may start first.
func waitForPool(ctx context.Context, store *ipam.Client, name string, log *slog.Logger) (*ipam.IPPool, error) {
	for {
		pool, err := store.FindPool(ctx, name)
		if err == nil {
			return pool, nil
		}
		if !errors.Is(err, ipam.ErrPoolNotFound) && ctx.Err() == nil {
			log.Info("waiting for the IP pool", "pool", name, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for IP pool %q: %w", name, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", key, value, err)
	}
	return nil
}
