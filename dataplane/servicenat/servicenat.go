// Package servicenat is the project's reference service NAT: a node agent
// that watches Services and EndpointSlices and programs kube-proxy's iptables
// mode, chain for chain (KUBE-SERVICES, KUBE-SVC-, KUBE-SEP-, KUBE-EXT-,
// KUBE-NODEPORTS, KUBE-POSTROUTING, ...), with iptables-restore --noflush on
// the legacy or the nft backend, so that the tracer meets the same rules as
// on a real cluster.
//
// Build turns a Snapshot of the API objects into a Ruleset, Rebuild does the
// same reusing the unchanged services' rules of a previous one, and
// Ruleset.Update gives the restore input for a full or a partial sync.
// Proxier runs the informers and the sync loop on a node.
package servicenat

import (
	"github.com/kubectl-nettrace/nettrace/dataplane/iptables"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// Defaults of Options.
const (
	DefaultMinSyncInterval  = time.Second
	DefaultFullSyncInterval = 5 * time.Minute
)

// kube-proxy's informer filters: Services claimed by another proxy and
// headless Services, with their EndpointSlices, are not watched.
const (
	serviceLabelSelector       = "!service.kubernetes.io/service-proxy-name"
	serviceFieldSelector       = "spec.clusterIP!=None"
	endpointSliceLabelSelector = "!service.kubernetes.io/headless"
)

// Options tune a Proxier. The zero value is kube-proxy's iptables defaults,
// except that LocalhostNodePorts is off and full syncs are more frequent.
type Options struct {
	// Backend forces an iptables backend; BackendAuto detects it.
	Backend Backend
	// ClusterCIDR, MasqueradeMark, MasqueradeAll, LocalhostNodePorts and
	// NodePortsOnNodeIPs are as in Config.
	ClusterCIDR        netip.Prefix
	MasqueradeMark     uint32
	MasqueradeAll      bool
	LocalhostNodePorts bool
	NodePortsOnNodeIPs bool
	// MinSyncInterval is the least time between two syncs; changes that
	// arrive meanwhile are applied together by the next one. Zero means
	// DefaultMinSyncInterval.
	MinSyncInterval time.Duration
	// FullSyncInterval is how often every chain is rewritten, which also
	// repairs rules someone else changed. Zero means DefaultFullSyncInterval.
	FullSyncInterval time.Duration
	// NetNSPath, when set, is the network namespace (a /run/netns/... or
	// /proc/PID/ns/net path) whose iptables are programmed; empty means the
	// caller's.
	NetNSPath string
	// Logger receives the sync log; nil means slog.Default().
	Logger *slog.Logger
}

// Proxier programs one node's service NAT.
type Proxier struct {
	client kubernetes.Interface
	cfg    Config
	opts   Options
	log    *slog.Logger
	kick   chan struct{} // a pending sync request

	// Set by Run.
	netns    ns.NetNS
	ipt      *iptables.Runner
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	// Sync state, owned by the sync loop.
	rules      *Ruleset    // the last built, reused by the next Rebuild
	programmed *Programmed // nil: the next sync is a full one
	notes      map[string]bool
}

// New returns a Proxier for the node nodeName with addresses nodeIPs (the
// IPv4 ones are used). Nothing runs before Run.
func New(client kubernetes.Interface, nodeName string, nodeIPs []netip.Addr, opts Options) (*Proxier, error) {
	if client == nil {
		return nil, errors.New("servicenat: no Kubernetes client")
	}
	if nodeName == "" {
		return nil, errors.New("servicenat: empty node name")
	}
	switch opts.Backend {
	case BackendAuto, BackendLegacy, BackendNFT:
	default:
		return nil, fmt.Errorf("servicenat: unknown iptables backend %q: want %q or %q", opts.Backend, BackendLegacy, BackendNFT)
	}
	if opts.MasqueradeMark != 0 && bits.OnesCount32(opts.MasqueradeMark) != 1 {
		return nil, fmt.Errorf("servicenat: masquerade mark %#x is not a single bit", opts.MasqueradeMark)
	}
	if opts.ClusterCIDR.IsValid() && !opts.ClusterCIDR.Addr().Is4() {
		return nil, fmt.Errorf("servicenat: cluster CIDR %s is not IPv4", opts.ClusterCIDR)
	}
	if opts.MinSyncInterval <= 0 {
		opts.MinSyncInterval = DefaultMinSyncInterval
	}
	if opts.FullSyncInterval <= 0 {
		opts.FullSyncInterval = DefaultFullSyncInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "servicenat", "node", nodeName)
	var ipv4 []netip.Addr
	for _, ip := range nodeIPs {
		if ip = ip.Unmap(); ip.Is4() {
			ipv4 = append(ipv4, ip)
		} else {
			log.Info("ignoring IPv6 node IP: this dataplane is IPv4 only", "ip", ip)
		}
	}
	return &Proxier{
		client: client,
		cfg: Config{
			NodeName:           nodeName,
			NodeIPs:            ipv4,
			ClusterCIDR:        opts.ClusterCIDR,
			MasqueradeMark:     opts.MasqueradeMark,
			MasqueradeAll:      opts.MasqueradeAll,
			LocalhostNodePorts: opts.LocalhostNodePorts,
			NodePortsOnNodeIPs: opts.NodePortsOnNodeIPs,
		},
		opts:  opts,
		log:   log,
		kick:  make(chan struct{}, 1),
		notes: make(map[string]bool),
	}, nil
}

// Run watches the API and keeps the node's rules in sync until ctx is done.
// It returns an error only when it cannot start; sync failures are logged and
// retried with a full sync.
func (p *Proxier) Run(ctx context.Context) error {
	if p.opts.NetNSPath != "" {
		netns, err := ns.GetNS(p.opts.NetNSPath)
		if err != nil {
			return fmt.Errorf("servicenat: opening network namespace: %w", err)
		}
		defer netns.Close()
		p.netns = netns
	}
	if err := p.setUp(ctx); err != nil {
		return fmt.Errorf("servicenat: %w", err)
	}

	serviceFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTransform(dropManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector, o.FieldSelector = serviceLabelSelector, serviceFieldSelector
		}))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTransform(dropManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = endpointSliceLabelSelector }))
	services := serviceFactory.Core().V1().Services()
	slices := sliceFactory.Discovery().V1().EndpointSlices()
	p.services, p.slices = services.Lister(), slices.Lister()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.requestSync() },
		UpdateFunc: func(any, any) { p.requestSync() },
		DeleteFunc: func(any) { p.requestSync() },
	}
	for _, inf := range []cache.SharedIndexInformer{services.Informer(), slices.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("servicenat: adding event handler: %w", err)
		}
	}
	serviceFactory.Start(ctx.Done())
	sliceFactory.Start(ctx.Done())
	defer sliceFactory.Shutdown()
	defer serviceFactory.Shutdown()
	// As kube-proxy: no rules until both caches are complete, or a partial
	// view would delete the chains of services not yet seen.
	if !cache.WaitForCacheSync(ctx.Done(), services.Informer().HasSynced, slices.Informer().HasSynced) {
		return nil
	}
	p.log.Info("caches synced, starting sync loop", "backend", p.ipt.Backend,
		"minSyncInterval", p.opts.MinSyncInterval, "fullSyncInterval", p.opts.FullSyncInterval)
	p.loop(ctx)
	return nil
}

// dropManagedFields is an informer transform: the managed fields are never
// read and are most of an object's size.
func dropManagedFields(obj any) (any, error) {
	if accessor, err := meta.Accessor(obj); err == nil {
		accessor.SetManagedFields(nil)
	}
	return obj, nil
}

// setUp picks the backend and reads or sets the sysctls the rules depend on.
func (p *Proxier) setUp(ctx context.Context) error {
	backend := p.opts.Backend
	if backend == BackendAuto {
		var why string
		backend, why = DetectBackend(ctx, p.netns)
		p.log.Info("detected iptables backend", "backend", backend, "reason", why)
	}
	p.ipt = &iptables.Runner{Backend: backend, Netns: p.netns}

	// Without nf_conntrack loaded the file is missing: not liberal.
	liberal, _ := p.readSysctl("net/netfilter/nf_conntrack_tcp_be_liberal")
	p.cfg.ConntrackTCPLiberal = liberal != "" && liberal != "0"
	if p.cfg.ConntrackTCPLiberal {
		p.log.Info("nf_conntrack_tcp_be_liberal is set: not dropping INVALID packets")
	}
	if p.cfg.localhostNodePorts() {
		if err := p.writeSysctl("net/ipv4/conf/all/route_localnet", "1"); err != nil {
			return fmt.Errorf("enabling NodePorts on localhost: %w", err)
		}
	}
	// As kube-proxy: without a counter its rules are written without it.
	for name, exists := range map[string]*bool{
		CounterInvalidDropped:     &p.cfg.CountInvalidDrops,
		CounterLocalhostNodePorts: &p.cfg.CountLocalhostNodePorts,
	} {
		if err := ensureCounter(p.netns, name); err != nil {
			p.log.Info("nfacct counter unavailable: its rules will not count", "counter", name, "err", err)
			continue
		}
		*exists = true
	}
	return nil
}

// inNetNS calls fn inside netns, or directly when netns is nil.
func inNetNS(netns ns.NetNS, fn func() error) error {
	if netns == nil {
		return fn()
	}
	return netns.Do(func(ns.NetNS) error { return fn() })
}

// readSysctl reads a sysctl of the programmed network namespace.
func (p *Proxier) readSysctl(name string) (string, error) {
	var value []byte
	err := inNetNS(p.netns, func() (err error) {
		value, err = os.ReadFile(filepath.Join("/proc/sys", name))
		return err
	})
	return strings.TrimSpace(string(value)), err
}

// writeSysctl sets a sysctl of the programmed network namespace.
func (p *Proxier) writeSysctl(name, value string) error {
	return inNetNS(p.netns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
	})
}

// requestSync asks the loop for a sync. Requests made before the loop takes
// the previous one merge into it.
func (p *Proxier) requestSync() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// maxRetryDelay bounds the backoff between failed syncs.
const maxRetryDelay = time.Minute

// loop syncs once at start, then whenever asked, never more often than
// MinSyncInterval, and fully every FullSyncInterval. A failed sync is retried
// as a full sync, after MinSyncInterval and then twice as long each time up
// to maxRetryDelay.
func (p *Proxier) loop(ctx context.Context) {
	full := time.NewTicker(p.opts.FullSyncInterval)
	defer full.Stop()
	var retry <-chan time.Time
	var last time.Time
	retryDelay := p.opts.MinSyncInterval
	p.requestSync()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-full.C:
			p.programmed = nil
		case <-retry:
			retry = nil
		}
		if wait := time.Until(last.Add(p.opts.MinSyncInterval)); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		// Whatever was asked while waiting is read by this sync.
		select {
		case <-p.kick:
		default:
		}
		last = time.Now()
		err := p.sync(ctx, p.snapshot())
		if err == nil {
			retryDelay = p.opts.MinSyncInterval
			continue
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Error("sync failed, retrying with a full sync", "err", err, "retryIn", retryDelay)
		retry = time.After(retryDelay)
		retryDelay = min(2*retryDelay, max(maxRetryDelay, p.opts.MinSyncInterval))
	}
}

// snapshot lists the informers' caches.
func (p *Proxier) snapshot() Snapshot {
	services, _ := p.services.List(labels.Everything())
	slices, _ := p.slices.List(labels.Everything())
	return Snapshot{Services: services, EndpointSlices: slices}
}

// sync programs the rules for snap: a full sync when nothing is known of the
// kernel's state, else a partial one that rewrites the top-level chains and
// only the services whose chains changed.
func (p *Proxier) sync(ctx context.Context, snap Snapshot) error {
	start := time.Now()
	rules := Rebuild(p.rules, snap, p.cfg)
	p.rules = rules
	p.logNotes(rules.Notes())

	from, full := p.programmed, p.programmed == nil
	// Until this sync succeeds the kernel state is unknown.
	p.programmed = nil
	if full {
		if err := p.ipt.EnsureJumps(ctx, serviceJumps); err != nil {
			return err
		}
		save, err := p.ipt.Save(ctx, "nat")
		if err != nil {
			return fmt.Errorf("listing nat chains: %w", err)
		}
		from = ReadProgrammed(save)
	}
	update := rules.Update(from)
	if !update.Noop {
		if err := p.ipt.Restore(ctx, update.Input); err != nil {
			return err
		}
	}
	p.programmed = rules.Programmed()
	level := slog.LevelInfo
	if update.Noop {
		level = slog.LevelDebug
	}
	p.log.Log(ctx, level, "synced", "full", full, "services", len(rules.services), "rewritten", update.Rewritten,
		"deletedChains", update.Deleted, "unchanged", update.Noop, "bytes", len(update.Input), "took", time.Since(start))
	return nil
}

// logNotes logs each note once, when it first appears.
func (p *Proxier) logNotes(notes []string) {
	seen := make(map[string]bool, len(notes))
	for _, n := range notes {
		seen[n] = true
		if !p.notes[n] {
			p.log.Info(n)
		}
	}
	p.notes = seen
}
