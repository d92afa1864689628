package loadbalancer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// SpeakerComponent is the source of the speaker's Events.
const SpeakerComponent = "nettrace-lb-speaker"

// ReasonNodeAssigned is the reason of the Event a speaker records on a
// service when its node starts announcing the service's address, as
// MetalLB's speaker does.
const ReasonNodeAssigned = "nodeAssigned"

// Defaults of SpeakerOptions.
const (
	DefaultGratuitousCount    = 3
	DefaultGratuitousInterval = time.Second
)

// SpeakerOptions tune a Speaker. The zero value is usable.
type SpeakerOptions struct {
	// Pool, when set, limits the announced addresses to it, so that
	// addresses the controller did not give are never answered for.
	Pool netip.Prefix
	// LoadBalancerClass is as in ControllerOptions.
	LoadBalancerClass string
	// NetNSPath, when set, is the network namespace (a /run/netns/... or
	// /proc/PID/ns/net path) of the interface; empty means the caller's.
	NetNSPath string
	// GratuitousCount gratuitous ARP replies, GratuitousInterval apart, are
	// broadcast when the node takes an address over. Zero means the
	// Defaults.
	GratuitousCount    int
	GratuitousInterval time.Duration
	// MemberNamespace holds the speakers' Leases, by which they know which
	// of them are alive; empty means DefaultMemberNamespace.
	MemberNamespace string
	// MemberLeaseDuration is how long a speaker counts as alive after its
	// Lease was last seen renewed; it renews it three times as often. Zero
	// means DefaultMemberLeaseDuration.
	MemberLeaseDuration time.Duration
	// Logger receives the speaker's log; nil means slog.Default().
	Logger *slog.Logger
}

// Speaker announces, MetalLB layer 2 style, the LoadBalancer addresses its
// node is the announcer of: it answers ARP for them on the node's underlay
// interface. It adds no address to the interface: the service NAT's rules
// for the address catch the packets the ARP answers draw.
type Speaker struct {
	client   kubernetes.Interface
	nodeName string
	iface    string
	opts     SpeakerOptions
	log      *slog.Logger

	// Set by Run.
	nodes    corelisters.NodeLister
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	arp      *arpResponder
	members  *members
	recorder record.EventRecorder
	kick     chan struct{}
	bursts   sync.WaitGroup

	// announced maps each address the node announces to its service's
	// namespace/name. Owned by Run's loop.
	announced map[netip.Addr]string
}

// NewSpeaker returns the Speaker of node nodeName, answering on interface
// iface. Nothing runs before Run.
func NewSpeaker(client kubernetes.Interface, nodeName, iface string, opts SpeakerOptions) (*Speaker, error) {
	if client == nil {
		return nil, errors.New("loadbalancer: no Kubernetes client")
	}
	if nodeName == "" {
		return nil, errors.New("loadbalancer: empty node name")
	}
	if iface == "" {
		return nil, errors.New("loadbalancer: empty interface name")
	}
	if opts.GratuitousCount <= 0 {
		opts.GratuitousCount = DefaultGratuitousCount
	}
	if opts.GratuitousInterval <= 0 {
		opts.GratuitousInterval = DefaultGratuitousInterval
	}
	if opts.MemberNamespace == "" {
		opts.MemberNamespace = DefaultMemberNamespace
	}
	if opts.MemberLeaseDuration <= 0 {
		opts.MemberLeaseDuration = DefaultMemberLeaseDuration
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Speaker{
		client:    client,
		nodeName:  nodeName,
		iface:     iface,
		opts:      opts,
		log:       log.With("component", "loadbalancer-speaker", "node", nodeName, "iface", iface),
		kick:      make(chan struct{}, 1),
		announced: make(map[netip.Addr]string),
		members:   newMembers(opts.MemberLeaseDuration),
	}, nil
}

// Run watches Nodes, Services, EndpointSlices and the speakers' Leases and
// announces the node's addresses until ctx is done, renewing its own Lease;
// then it withdraws them and deletes its Lease. It returns an error when it
// cannot start or when the interface's socket fails.
func (s *Speaker) Run(ctx context.Context) error {
	if err := s.listen(); err != nil {
		return fmt.Errorf("loadbalancer: %w", err)
	}
	defer s.arp.close()

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	s.recorder = broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: SpeakerComponent, Host: s.nodeName})

	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0, informers.WithTransform(dropManagedFields))
	nodes, services, endpointSlices := factory.Core().V1().Nodes(), factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices()
	s.nodes, s.services, s.slices = nodes.Lister(), services.Lister(), endpointSlices.Lister()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.requestSync() },
		UpdateFunc: func(any, any) { s.requestSync() },
		DeleteFunc: func(any) { s.requestSync() },
	}
	for _, inf := range []cache.SharedIndexInformer{nodes.Informer(), services.Informer(), endpointSlices.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("loadbalancer: adding event handler: %w", err)
		}
	}
	leaseFactory := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithNamespace(s.opts.MemberNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = MemberLabel }))
	leases := leaseFactory.Coordination().V1().Leases().Informer()
	_, err := leases.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.members.observe(obj); s.requestSync() },
		UpdateFunc: func(_, obj any) { s.members.observe(obj); s.requestSync() },
		DeleteFunc: func(obj any) { s.members.forget(obj); s.requestSync() },
	})
	if err != nil {
		return fmt.Errorf("loadbalancer: adding event handler: %w", err)
	}
	s.renew(ctx)
	defer s.resign()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	leaseFactory.Start(ctx.Done())
	defer leaseFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced, services.Informer().HasSynced,
		endpointSlices.Informer().HasSynced, leases.HasSynced) {
		return nil
	}

	served := make(chan error, 1)
	go func() { served <- s.arp.serve() }()
	s.log.Info("answering ARP for the addresses this node announces", "mac", s.arp.mac().String())
	err = s.loop(ctx, served)
	s.withdrawAll()
	s.bursts.Wait()
	return err
}

// listen opens the ARP responder in the node's network namespace.
func (s *Speaker) listen() error {
	open := func() (err error) {
		s.arp, err = listenARP(s.iface, s.log)
		return err
	}
	if s.opts.NetNSPath == "" {
		return open()
	}
	if err := ns.WithNetNSPath(s.opts.NetNSPath, func(ns.NetNS) error { return open() }); err != nil {
		return fmt.Errorf("in network namespace %s: %w", s.opts.NetNSPath, err)
	}
	return nil
}

// requestSync asks the loop to re-evaluate the announcements. Requests made
// before the loop takes the previous one merge into it.
func (s *Speaker) requestSync() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// loop re-evaluates the announcements on every change, and each time it
// renews the speaker's Lease (when the other speakers' Leases may have
// expired), until ctx is done or the responder fails.
func (s *Speaker) loop(ctx context.Context, served <-chan error) error {
	renewal := time.NewTicker(s.opts.MemberLeaseDuration / 3)
	defer renewal.Stop()
	s.requestSync()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			return fmt.Errorf("loadbalancer: %w", err)
		case <-renewal.C:
			s.renew(ctx)
			s.sync(ctx)
		case <-s.kick:
			s.sync(ctx)
		}
	}
}

// renew renews the speaker's Lease. A failure is logged: the Lease ages,
// and when it expires every speaker, this one too, takes the node for dead.
func (s *Speaker) renew(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.MemberLeaseDuration/3)
	defer cancel()
	if err := renewMember(ctx, s.client, s.opts.MemberNamespace, s.nodeName, s.opts.MemberLeaseDuration); err != nil {
		s.log.Warn("renewing the speaker's Lease failed", "err", err)
	}
}

// resign deletes the speaker's Lease when it stops, after it withdrew its
// addresses, so that the other speakers take them over at once.
func (s *Speaker) resign() {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.MemberLeaseDuration/3)
	defer cancel()
	if err := removeMember(ctx, s.client, s.opts.MemberNamespace, s.nodeName); err != nil {
		s.log.Warn("removing the speaker's Lease failed: the other speakers wait for it to expire", "err", err)
	}
}

// assignment is what the API says of one load balancer address.
type assignment struct {
	svc       *v1.Service
	announcer string // empty when no node is eligible
}

// sync announces the addresses this node is the announcer of and withdraws
// the others.
func (s *Speaker) sync(ctx context.Context) {
	assignments := s.assignments()
	for addr, key := range s.announced {
		a, ok := assignments[addr]
		switch {
		case !ok:
			s.withdraw(addr, "address is no longer in the status of "+key)
		case serviceKey(a.svc) != key:
			s.withdraw(addr, "address moved to service "+serviceKey(a.svc))
		case a.announcer == "":
			s.withdraw(addr, "no node is eligible")
		case a.announcer != s.nodeName:
			s.withdraw(addr, "node "+a.announcer+" is the announcer now")
		}
	}
	for addr, a := range assignments {
		if a.announcer == s.nodeName {
			if _, ok := s.announced[addr]; !ok {
				s.takeOver(ctx, addr, a.svc)
			}
		}
	}
}

// assignments maps every load balancer address to announce to its service
// and announcer. Of two services with one address, the first by
// namespace/name has it.
func (s *Speaker) assignments() map[netip.Addr]assignment {
	nodes, _ := s.nodes.List(labels.Everything())
	nodes = s.members.alive(nodes)
	services, _ := s.services.List(labels.Everything())
	slices.SortFunc(services, func(a, b *v1.Service) int { return cmp.Compare(serviceKey(a), serviceKey(b)) })
	assignments := make(map[netip.Addr]assignment)
	for _, svc := range services {
		if !managed(svc, s.opts.LoadBalancerClass) {
			continue
		}
		var eligible []string
		for _, addr := range vipAddrs(svc) {
			if !addr.Is4() || (s.opts.Pool.IsValid() && !s.opts.Pool.Contains(addr)) {
				continue
			}
			if _, taken := assignments[addr]; taken {
				continue
			}
			if eligible == nil {
				eligible = EligibleNodes(svc, nodes, s.endpointSlices(svc))
			}
			announcer, _ := Announcer(addr, eligible)
			assignments[addr] = assignment{svc: svc, announcer: announcer}
		}
	}
	return assignments
}

// endpointSlices returns the EndpointSlices of svc, when its announcers
// depend on them.
func (s *Speaker) endpointSlices(svc *v1.Service) []*discovery.EndpointSlice {
	if svc.Spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal {
		return nil
	}
	selector := labels.SelectorFromSet(labels.Set{discovery.LabelServiceName: svc.Name})
	list, _ := s.slices.EndpointSlices(svc.Namespace).List(selector)
	return list
}

// takeOver starts answering ARP for addr, records the nodeAssigned Event and
// broadcasts gratuitous ARP replies so that the neighbours forget the
// previous announcer's MAC at once.
func (s *Speaker) takeOver(ctx context.Context, addr netip.Addr, svc *v1.Service) {
	key := serviceKey(svc)
	s.announced[addr] = key
	s.arp.announce(addr)
	s.log.Info("taking over address: answering ARP for it", "ip", addr, "service", key, "mac", s.arp.mac().String())
	s.recorder.Eventf(svc, v1.EventTypeNormal, ReasonNodeAssigned, "announcing from node %q with protocol %q", s.nodeName, "layer2")
	s.bursts.Go(func() { s.gratuitousBurst(ctx, addr) })
}

// gratuitousBurst broadcasts the gratuitous ARP replies for addr while the
// node announces it.
func (s *Speaker) gratuitousBurst(ctx context.Context, addr netip.Addr) {
	tick := time.NewTicker(s.opts.GratuitousInterval)
	defer tick.Stop()
	for i := 0; i < s.opts.GratuitousCount; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		if !s.arp.announcing(addr) {
			return
		}
		if err := s.arp.gratuitous(addr); err != nil {
			s.log.Warn("gratuitous ARP failed", "ip", addr, "err", err)
		}
	}
}

// withdraw stops answering ARP for addr.
func (s *Speaker) withdraw(addr netip.Addr, why string) {
	s.arp.withdraw(addr)
	s.log.Info("giving up address: no longer answering ARP for it", "ip", addr, "service", s.announced[addr], "reason", why)
	delete(s.announced, addr)
}

// withdrawAll withdraws every address, when the speaker stops.
func (s *Speaker) withdrawAll() {
	for addr := range s.announced {
		s.withdraw(addr, "speaker stopping")
	}
}
