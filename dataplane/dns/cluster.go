package dns

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/miekg/dns"
)

// Names of the informer indexes that the reverse and headless lookups use.
const (
	indexClusterIP = "clusterIP"    // Services by IPv4 ClusterIP
	indexService   = "service"      // EndpointSlices by "<ns>/<service>"
	indexAddress   = "endpointIPv4" // EndpointSlices by endpoint IPv4 address
)

// Cluster is the part of the Kubernetes API that the DNS server answers
// from: Services, EndpointSlices and Namespaces, kept current by shared
// informers. It only reads the informer caches; a lookup never calls the
// API server.
type Cluster struct {
	factory    informers.SharedInformerFactory
	services   cache.SharedIndexInformer
	slices     cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	log        *slog.Logger
}

// endpoint is one ready IPv4 address of a Service, with the hostname the
// DNS spec gives it and the ports of its EndpointSlice.
type endpoint struct {
	addr     netip.Addr
	hostname string
	ports    []discoveryv1.EndpointPort
}

// NewCluster prepares informers for Services, EndpointSlices and Namespaces
// on client. Nothing is listed until Start.
func NewCluster(client kubernetes.Interface, log *slog.Logger) (*Cluster, error) {
	factory := informers.NewSharedInformerFactory(client, 0)
	c := &Cluster{
		factory:    factory,
		services:   factory.Core().V1().Services().Informer(),
		slices:     factory.Discovery().V1().EndpointSlices().Informer(),
		namespaces: factory.Core().V1().Namespaces().Informer(),
		log:        log,
	}
	if err := c.services.AddIndexers(cache.Indexers{indexClusterIP: serviceClusterIPs}); err != nil {
		return nil, fmt.Errorf("indexing services by cluster IP: %w", err)
	}
	if err := c.slices.AddIndexers(cache.Indexers{
		indexService: sliceService,
		indexAddress: sliceAddresses,
	}); err != nil {
		return nil, fmt.Errorf("indexing endpoint slices: %w", err)
	}
	if _, err := c.services.AddEventHandler(ignoreLogger(log, "service", serviceIgnores)); err != nil {
		return nil, fmt.Errorf("watching services: %w", err)
	}
	if _, err := c.slices.AddEventHandler(ignoreLogger(log, "endpointslice", sliceIgnores)); err != nil {
		return nil, fmt.Errorf("watching endpoint slices: %w", err)
	}
	return c, nil
}

// Start lists and watches the cluster until stop is closed.
func (c *Cluster) Start(stop <-chan struct{}) {
	c.factory.Start(stop)
}

// HasSynced reports whether the first list of every informer has arrived.
// Until then the server answers names in the cluster zone with SERVFAIL.
func (c *Cluster) HasSynced() bool {
	return c.services.HasSynced() && c.slices.HasSynced() && c.namespaces.HasSynced()
}

// Shutdown stops the informers and waits for their goroutines.
func (c *Cluster) Shutdown() {
	c.factory.Shutdown()
}

// namespaceExists reports whether namespace ns exists.
func (c *Cluster) namespaceExists(ns string) bool {
	_, ok, _ := c.namespaces.GetStore().GetByKey(ns)
	return ok
}

// service returns the Service ns/name, or nil.
func (c *Cluster) service(ns, name string) *corev1.Service {
	obj, ok, _ := c.services.GetStore().GetByKey(ns + "/" + name)
	if !ok {
		return nil
	}
	return obj.(*corev1.Service)
}

// readyEndpoints returns the ready IPv4 endpoints of svc, in address order,
// each address once. An endpoint counts as ready when its Ready condition
// is true or unset, or when the Service publishes not-ready addresses.
func (c *Cluster) readyEndpoints(svc *corev1.Service) []endpoint {
	objs, _ := c.slices.GetIndexer().ByIndex(indexService, svc.Namespace+"/"+svc.Name)
	var eps []endpoint
	for _, obj := range objs {
		slice := obj.(*discoveryv1.EndpointSlice)
		if slice.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, ep := range slice.Endpoints {
			if !svc.Spec.PublishNotReadyAddresses && ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil || !addr.Is4() {
					continue
				}
				eps = append(eps, endpoint{addr: addr, hostname: endpointHostname(ep, addr), ports: slice.Ports})
			}
		}
	}
	slices.SortStableFunc(eps, func(a, b endpoint) int { return a.addr.Compare(b.addr) })
	return slices.CompactFunc(eps, func(a, b endpoint) bool { return a.addr == b.addr })
}

// servicesWithClusterIP returns the Services whose IPv4 ClusterIP is addr.
func (c *Cluster) servicesWithClusterIP(addr netip.Addr) []*corev1.Service {
	objs, _ := c.services.GetIndexer().ByIndex(indexClusterIP, addr.String())
	svcs := make([]*corev1.Service, 0, len(objs))
	for _, obj := range objs {
		svcs = append(svcs, obj.(*corev1.Service))
	}
	return svcs
}

// headlessEndpointsWithAddress returns, for every headless Service that has
// addr as a ready endpoint, the name "<hostname>.<service>.<ns>" of that
// endpoint.
func (c *Cluster) headlessEndpointsWithAddress(addr netip.Addr) []string {
	objs, _ := c.slices.GetIndexer().ByIndex(indexAddress, addr.String())
	var names []string
	for _, obj := range objs {
		slice := obj.(*discoveryv1.EndpointSlice)
		svc := c.service(slice.Namespace, slice.Labels[discoveryv1.LabelServiceName])
		if svc == nil || !isHeadless(svc) {
			continue
		}
		for _, ep := range c.readyEndpoints(svc) {
			if ep.addr == addr {
				names = append(names, ep.hostname+"."+svc.Name+"."+svc.Namespace)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// isHeadless reports whether svc has no ClusterIP by design.
func isHeadless(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName && svc.Spec.ClusterIP == corev1.ClusterIPNone
}

// clusterIPv4 returns the IPv4 ClusterIP of svc, if it has one.
func clusterIPv4(svc *corev1.Service) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if addr, err := netip.ParseAddr(ip); err == nil && addr.Is4() {
			return addr, true
		}
	}
	return netip.Addr{}, false
}

// externalName returns the CNAME target of an ExternalName Service, when it
// is a valid domain name.
func externalName(svc *corev1.Service) (string, bool) {
	name := svc.Spec.ExternalName
	if svc.Spec.Type != corev1.ServiceTypeExternalName || name == "" {
		return "", false
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return "", false
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return "", false
	}
	return dns.Fqdn(strings.ToLower(name)), true
}

// endpointHostname is the spec's hostname of an endpoint: its hostname
// field, or else its address with dashes for dots.
func endpointHostname(ep discoveryv1.Endpoint, addr netip.Addr) string {
	if ep.Hostname != nil && *ep.Hostname != "" {
		return strings.ToLower(*ep.Hostname)
	}
	return strings.ReplaceAll(addr.String(), ".", "-")
}

// serviceClusterIPs indexes a Service by its IPv4 ClusterIP.
func serviceClusterIPs(obj any) ([]string, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	if addr, ok := clusterIPv4(svc); ok {
		return []string{addr.String()}, nil
	}
	return nil, nil
}

// sliceService indexes an EndpointSlice by the Service it belongs to.
func sliceService(obj any) ([]string, error) {
	slice, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := slice.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{slice.Namespace + "/" + name}, nil
}

// sliceAddresses indexes an IPv4 EndpointSlice by its endpoint addresses.
func sliceAddresses(obj any) ([]string, error) {
	slice, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || slice.AddressType != discoveryv1.AddressTypeIPv4 {
		return nil, nil
	}
	var addrs []string
	for _, ep := range slice.Endpoints {
		addrs = append(addrs, ep.Addresses...)
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}

// serviceIgnores lists what the server leaves out of the Service's records.
func serviceIgnores(svc *corev1.Service) []string {
	var reasons []string
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		if _, ok := externalName(svc); !ok {
			reasons = append(reasons, fmt.Sprintf("externalName %q is not a domain name: no CNAME record", svc.Spec.ExternalName))
		}
		return reasons
	}
	if svc.Spec.ClusterIP == "" {
		return append(reasons, "no cluster IP: no records")
	}
	for _, ip := range svc.Spec.ClusterIPs {
		if addr, err := netip.ParseAddr(ip); err == nil && addr.Is6() {
			reasons = append(reasons, fmt.Sprintf("IPv6 cluster IP %s: this server answers IPv4 only, AAAA gets NODATA", ip))
		}
	}
	return reasons
}

// sliceIgnores lists what the server leaves out of the EndpointSlice.
func sliceIgnores(slice *discoveryv1.EndpointSlice) []string {
	if slice.AddressType != discoveryv1.AddressTypeIPv4 {
		return []string{fmt.Sprintf("address type %s: this server answers IPv4 only", slice.AddressType)}
	}
	return nil
}

// ignoreLogger returns informer handlers that log, one line each, what
// ignores finds in an object when it is added or when the list changes.
func ignoreLogger[T interface {
	*corev1.Service | *discoveryv1.EndpointSlice
	GetNamespace() string
	GetName() string
}](log *slog.Logger, kind string, ignores func(T) []string) cache.ResourceEventHandlerFuncs {
	report := func(obj T, reasons []string) {
		for _, r := range reasons {
			log.Info("ignoring part of "+kind, kind, obj.GetNamespace()+"/"+obj.GetName(), "reason", r)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(T); ok {
				report(o, ignores(o))
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(T)
			n, ok2 := newObj.(T)
			if !ok1 || !ok2 {
				return
			}
			if reasons := ignores(n); !slices.Equal(ignores(o), reasons) {
				report(n, reasons)
			}
		},
	}
}
