package loadbalancer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// ControllerComponent is the source of the controller's Events.
const ControllerComponent = "nettrace-lb-controller"

// Defaults of ControllerOptions: kube-controller-manager's leader election.
const (
	DefaultLeaseName     = "nettrace-lb-controller"
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Event reasons of the controller.
const (
	ReasonIPAllocated      = "IPAllocated"
	ReasonAllocationFailed = "AllocationFailed"
)

// ControllerOptions tune a Controller. The zero value is usable.
type ControllerOptions struct {
	// Identity names this candidate in the Lease, usually the node name.
	// Empty means the host name.
	Identity string
	// LeaseName is the Lease in kube-system that elects the one allocating
	// controller. Empty means DefaultLeaseName.
	LeaseName string
	// LeaseDuration, RenewDeadline and RetryPeriod are as in client-go's
	// leaderelection; zero means the Default ones.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// LoadBalancerClass is the spec.loadBalancerClass of the services to
	// serve. Empty means services without a class, as MetalLB does.
	LoadBalancerClass string
	// Logger receives the controller's log; nil means slog.Default().
	Logger *slog.Logger
}

// Controller gives LoadBalancer services an address from a pool, in their
// status.loadBalancer.ingress. Every node runs one; the one holding the Lease
// allocates.
type Controller struct {
	client kubernetes.Interface
	prefix netip.Prefix
	opts   ControllerOptions
	log    *slog.Logger
}

// NewController returns a Controller handing out the addresses of pool, all
// of them, network and broadcast addresses included. Nothing runs before Run.
func NewController(client kubernetes.Interface, pool netip.Prefix, opts ControllerOptions) (*Controller, error) {
	if client == nil {
		return nil, errors.New("loadbalancer: no Kubernetes client")
	}
	if !pool.IsValid() || !pool.Addr().Is4() {
		return nil, fmt.Errorf("loadbalancer: address pool %s is not an IPv4 prefix: this dataplane is IPv4 only", pool)
	}
	if opts.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("loadbalancer: naming the leader election candidate: %w", err)
		}
		opts.Identity = host
	}
	if opts.LeaseName == "" {
		opts.LeaseName = DefaultLeaseName
	}
	if opts.LeaseDuration <= 0 {
		opts.LeaseDuration = DefaultLeaseDuration
	}
	if opts.RenewDeadline <= 0 {
		opts.RenewDeadline = DefaultRenewDeadline
	}
	if opts.RetryPeriod <= 0 {
		opts.RetryPeriod = DefaultRetryPeriod
	}
	if opts.LeaseDuration <= opts.RenewDeadline || float64(opts.RenewDeadline) <= leaderelection.JitterFactor*float64(opts.RetryPeriod) {
		return nil, fmt.Errorf("loadbalancer: want lease duration %s > renew deadline %s > %.1f × retry period %s",
			opts.LeaseDuration, opts.RenewDeadline, leaderelection.JitterFactor, opts.RetryPeriod)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Controller{
		client: client,
		prefix: pool.Masked(),
		opts:   opts,
		log:    log.With("component", "loadbalancer-controller", "identity", opts.Identity),
	}, nil
}

// Run stands for leader election until ctx is done, and allocates while it
// leads. Losing the Lease stops the allocation and makes it stand again.
func (c *Controller) Run(ctx context.Context) error {
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: ControllerComponent})

	// The elector hands each term of leadership to standForElection.
	leading := make(chan context.Context)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: c.opts.LeaseName},
			Client:     c.client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: c.opts.Identity},
		},
		Name:            c.opts.LeaseName,
		LeaseDuration:   c.opts.LeaseDuration,
		RenewDeadline:   c.opts.RenewDeadline,
		RetryPeriod:     c.opts.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leadCtx context.Context) {
				select {
				case leading <- leadCtx:
				case <-leadCtx.Done():
				}
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(identity string) {
				c.log.Info("leader elected", "leader", identity, "lease", metav1.NamespaceSystem+"/"+c.opts.LeaseName)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("loadbalancer: setting up leader election: %w", err)
	}
	for ctx.Err() == nil {
		if err := c.standForElection(ctx, elector, leading, recorder); err != nil {
			c.log.Error("allocation stopped, standing again", "err", err, "in", c.opts.RetryPeriod)
			select {
			case <-ctx.Done():
			case <-time.After(c.opts.RetryPeriod):
			}
		}
	}
	return nil
}

// standForElection waits for the Lease and allocates until the Lease is lost,
// ctx is done or the allocation fails. The Lease is released only once the
// allocation has stopped, so that two controllers never allocate at once.
func (c *Controller) standForElection(ctx context.Context, elector *leaderelection.LeaderElector, leading <-chan context.Context, recorder record.EventRecorder) error {
	// The elector's context outlives ctx until the allocation has stopped.
	electorCtx, stopElector := context.WithCancel(context.WithoutCancel(ctx))
	electorDone := make(chan struct{})
	go func() {
		defer close(electorDone)
		elector.Run(electorCtx)
	}()
	defer func() {
		stopElector()
		<-electorDone
	}()

	select {
	case <-ctx.Done():
		return nil
	case <-electorDone:
		return nil
	case leadCtx := <-leading:
		allocCtx, stop := context.WithCancel(leadCtx)
		defer stop()
		context.AfterFunc(ctx, stop)
		c.log.Info("leading: allocating addresses", "pool", c.prefix)
		err := c.allocate(allocCtx, recorder)
		c.log.Info("stopped allocating addresses")
		return err
	}
}

// allocate runs the allocation while ctx lasts: it lists every Service,
// rebuilds the allocations from their statuses, then serves the changes.
func (c *Controller) allocate(ctx context.Context, recorder record.EventRecorder) error {
	factory := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTransform(dropManagedFields))
	services := factory.Core().V1().Services()
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "loadbalancer"})
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("adding service event handler: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), services.Informer().HasSynced) {
		return nil
	}

	a := &allocator{
		client:   c.client,
		services: services.Lister(),
		recorder: recorder,
		class:    c.opts.LoadBalancerClass,
		log:      c.log,
		pool:     newPool(c.prefix),
		queue:    queue,
		pending:  make(map[string]bool),
	}
	all, err := a.services.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing services: %w", err)
	}
	a.rebuild(all)

	context.AfterFunc(ctx, queue.ShutDown)
	for a.processNext(ctx) {
	}
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

// allocator is the state of one term of leadership. Only its worker touches
// it.
type allocator struct {
	client   kubernetes.Interface
	services corelisters.ServiceLister
	recorder record.EventRecorder
	class    string
	log      *slog.Logger
	pool     *pool
	queue    workqueue.TypedRateLimitingInterface[string]
	// pending are the services waiting for an address someone holds; they
	// are looked at again when an address is released.
	pending map[string]bool
}

// rebuild takes over the addresses that the services' statuses already hold,
// oldest service first, so that an address survives a restart or a change
// of leader. Of two services claiming one address the older keeps it, and a
// service keeps only its first address; the others are put right when the
// services are synced.
func (a *allocator) rebuild(services []*v1.Service) {
	services = slices.Clone(services)
	slices.SortFunc(services, func(x, y *v1.Service) int {
		if c := x.CreationTimestamp.Compare(y.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(serviceKey(x), serviceKey(y))
	})
	for _, svc := range services {
		if !managed(svc, a.class) {
			continue
		}
		key := serviceKey(svc)
		for _, addr := range vipAddrs(svc) {
			if !a.pool.contains(addr) {
				continue
			}
			if err := a.pool.assign(key, addr); err != nil {
				a.log.Warn("not keeping address from status", "service", key, "ip", addr, "err", err)
			}
		}
	}
	a.log.Info("rebuilt allocations from service statuses", "pool", a.pool.prefix, "inUse", len(a.pool.byAddr))
}

// processNext syncs the next queued service and reports whether the queue
// is still open.
func (a *allocator) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			a.log.Error("syncing service failed, retrying", "service", key, "err", err)
			a.queue.AddRateLimited(key)
		}
		return true
	}
	a.queue.Forget(key)
	return true
}

// sync brings one service's allocation and status in line with its spec.
func (a *allocator) sync(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return fmt.Errorf("parsing service key %q: %w", key, err)
	}
	svc, err := a.services.Services(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		a.release(key, "service deleted")
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting service %s: %w", key, err)
	}
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		a.release(key, "service is no longer of type LoadBalancer")
		return a.clearStatus(ctx, svc)
	}
	if !managed(svc, a.class) {
		// Another implementation's service: leave it alone.
		a.release(key, "service is of another loadBalancerClass")
		return nil
	}
	addr, ok := a.choose(svc)
	if !ok {
		return nil
	}
	return a.setStatus(ctx, svc, addr)
}

// choose returns the address svc should have, allocating it if needed. It
// returns false, after a Warning Event, when the service must wait.
func (a *allocator) choose(svc *v1.Service) (netip.Addr, bool) {
	key := serviceKey(svc)
	held, holds := a.pool.assigned(key)
	if len(svc.Spec.IPFamilies) > 0 && !slices.Contains(svc.Spec.IPFamilies, v1.IPv4Protocol) {
		a.release(key, "service is not IPv4")
		a.fail(svc, "service families %v do not include IPv4, the family of pool %s", svc.Spec.IPFamilies, a.pool.prefix)
		return netip.Addr{}, false
	}
	if requested := svc.Spec.LoadBalancerIP; requested != "" {
		want, err := netip.ParseAddr(requested)
		if err != nil {
			a.release(key, "spec.loadBalancerIP is not an address")
			a.fail(svc, "spec.loadBalancerIP %q is not an IP address", requested)
			return netip.Addr{}, false
		}
		if holds && held == want {
			return held, true
		}
		if holds {
			a.release(key, "spec.loadBalancerIP asks for "+want.String())
		}
		if err := a.pool.assign(key, want); err != nil {
			a.pending[key] = true
			a.fail(svc, "requested spec.loadBalancerIP: %v", err)
			return netip.Addr{}, false
		}
		delete(a.pending, key)
		a.log.Info("allocated address", "service", key, "ip", want, "requested", true)
		return want, true
	}
	if holds {
		return held, true
	}
	addr, ok := a.pool.allocate(key)
	if !ok {
		a.pending[key] = true
		a.log.Warn("pool exhausted: service left pending", "service", key, "pool", a.pool.prefix)
		a.fail(svc, "no available IPs in pool %s", a.pool.prefix)
		return netip.Addr{}, false
	}
	delete(a.pending, key)
	a.log.Info("allocated address", "service", key, "ip", addr)
	return addr, true
}

// fail records a Warning Event on svc.
func (a *allocator) fail(svc *v1.Service, format string, args ...any) {
	a.recorder.Eventf(svc, v1.EventTypeWarning, ReasonAllocationFailed, format, args...)
}

// release frees the address of the service, if it holds one, and looks again
// at the services waiting for one.
func (a *allocator) release(key, why string) {
	delete(a.pending, key)
	addr, ok := a.pool.release(key)
	if !ok {
		return
	}
	a.log.Info("released address", "service", key, "ip", addr, "reason", why)
	for waiting := range a.pending {
		a.queue.Add(waiting)
	}
}

// setStatus writes addr as the service's only ingress, with ipMode VIP, if
// the status says otherwise.
func (a *allocator) setStatus(ctx context.Context, svc *v1.Service, addr netip.Addr) error {
	vip := v1.LoadBalancerIPModeVIP
	want := []v1.LoadBalancerIngress{{IP: addr.String(), IPMode: &vip}}
	if ingressEqual(svc.Status.LoadBalancer.Ingress, want) {
		return nil
	}
	updated := svc.DeepCopy()
	updated.Status.LoadBalancer.Ingress = want
	if _, err := a.client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing %s into the status of %s: %w", addr, serviceKey(svc), err)
	}
	a.recorder.Eventf(svc, v1.EventTypeNormal, ReasonIPAllocated, "Assigned IP %s from pool %s", addr, a.pool.prefix)
	return nil
}

// clearStatus removes the ingresses of a service that is no longer a load
// balancer, if they hold addresses of the pool.
func (a *allocator) clearStatus(ctx context.Context, svc *v1.Service) error {
	if !slices.ContainsFunc(vipAddrs(svc), a.pool.contains) {
		return nil
	}
	updated := svc.DeepCopy()
	updated.Status.LoadBalancer = v1.LoadBalancerStatus{}
	if _, err := a.client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("clearing the load balancer status of %s: %w", serviceKey(svc), err)
	}
	return nil
}

// ingressEqual reports whether two ingress lists are the same.
func ingressEqual(a, b []v1.LoadBalancerIngress) bool {
	return slices.EqualFunc(a, b, func(x, y v1.LoadBalancerIngress) bool {
		return x.IP == y.IP && x.Hostname == y.Hostname && len(x.Ports) == 0 && len(y.Ports) == 0 &&
			(x.IPMode == nil) == (y.IPMode == nil) && (x.IPMode == nil || *x.IPMode == *y.IPMode)
	})
}

// serviceKey is the namespace/name of svc, the queue's key.
func serviceKey(svc *v1.Service) string {
	return svc.Namespace + "/" + svc.Name
}
