// Package kubelet is the lab's node runtime: a small kubelet for nodes that
// are network namespaces. It registers the Node and keeps it Ready, watches
// the pods bound to the node, gives each pod a network namespace wired by the
// CNI plugin through libcni (as containerd does), runs each container as a
// process inside it, and reports the pod's status. Images map to built-in
// programs (see images.go).
package kubelet

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Config describes one node.
type Config struct {
	NodeName string
	NodeIP   netip.Addr
	// NodeNetns is the name of the node's network namespace, where
	// hostNetwork pods run.
	NodeNetns string
	// Master marks the control-plane node: it registers with the
	// control-plane NoSchedule taint, as kubeadm's nodes do.
	Master bool
	// Dir holds the node's runtime state: sandboxes, container logs.
	Dir string
	// CNIConfDir and CNIBinDir are the node's /etc/cni/net.d and /opt/cni/bin.
	CNIConfDir string
	CNIBinDir  string
	// ClusterDNS and ClusterDomain go into each pod's resolv.conf.
	ClusterDNS    netip.Addr
	ClusterDomain string
	// NodeResolvConf is the resolv.conf of pods with dnsPolicy Default.
	NodeResolvConf string
	// KubernetesService is the ClusterIP of the "kubernetes" service, given
	// to containers as KUBERNETES_SERVICE_HOST.
	KubernetesService netip.Addr
	// CAFile is the cluster CA, mounted with service-account tokens.
	CAFile string
	// Images runs the built-in programs of the images the lab knows.
	Images Images
}

// Kubelet runs the pods of one node.
type Kubelet struct {
	cfg    Config
	client kubernetes.Interface
	cni    *cniRuntime
	queue  workqueue.TypedRateLimitingInterface[types.UID]
	pods   cache.Indexer

	mu    sync.Mutex
	state map[types.UID]*podRuntime
}

// New prepares a kubelet; Run starts it.
func New(cfg Config, client kubernetes.Interface) (*Kubelet, error) {
	cni, err := newCNIRuntime(cfg.CNIConfDir, cfg.CNIBinDir, filepath.Join(cfg.Dir, "cni-cache"))
	if err != nil {
		return nil, err
	}
	return &Kubelet{
		cfg:    cfg,
		client: client,
		cni:    cni,
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[types.UID]()),
		state:  map[types.UID]*podRuntime{},
	}, nil
}

// Run registers the node, recovers the sandboxes a previous run left, and
// runs the node's pods until ctx ends. Pods keep running when it returns, as
// containers do when a kubelet stops.
func (k *Kubelet) Run(ctx context.Context) error {
	if err := k.registerNode(ctx); err != nil {
		return err
	}
	go k.heartbeat(ctx)

	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	k.pods = informer.GetIndexer()
	enqueue := func(obj any) {
		if pod, ok := podFrom(obj); ok {
			k.queue.Add(pod.UID)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return fmt.Errorf("waiting for the pod cache: %w", ctx.Err())
	}
	if err := k.recover(ctx); err != nil {
		return err
	}
	go k.probeLoop(ctx)
	go func() { <-ctx.Done(); k.queue.ShutDown() }()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k.processNext(ctx) {
			}
		}()
	}
	wg.Wait()
	return nil
}

func podFrom(obj any) (*corev1.Pod, bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	return pod, ok
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	uid, shutdown := k.queue.Get()
	if shutdown {
		return false
	}
	defer k.queue.Done(uid)
	if err := k.syncPod(ctx, uid); err != nil {
		log.Printf("pod %s: %v (retrying)", k.describe(uid), err)
		k.queue.AddRateLimited(uid)
		return true
	}
	k.queue.Forget(uid)
	return true
}

// podByUID finds a pod of this node in the informer cache.
func (k *Kubelet) podByUID(uid types.UID) *corev1.Pod {
	for _, obj := range k.pods.List() {
		if pod := obj.(*corev1.Pod); pod.UID == uid {
			return pod
		}
	}
	return nil
}

func (k *Kubelet) describe(uid types.UID) string {
	if pod := k.podByUID(uid); pod != nil {
		return pod.Namespace + "/" + pod.Name
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if pr, ok := k.state[uid]; ok {
		return pr.Namespace + "/" + pr.Name
	}
	return string(uid)
}

// retryAfter is how soon a pod is looked at again while a container waits
// to restart.
const retryAfter = time.Second
