package node

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
)

// leakInterval is how often IPAM is checked for addresses of vanished pods.
const leakInterval = 30 * time.Second

// runLeakCollector releases, every leakInterval, the pod addresses whose pod
// has been gone for longer than the grace period (a pod deleted while its
// node was down never got its CNI DEL).
func runLeakCollector(ctx context.Context, client kubernetes.Interface, store *ipam.Client, cfg Config, log *slog.Logger) error {
	factory := informers.NewSharedInformerFactory(client, 0)
	pods := factory.Core().V1().Pods()
	informer := pods.Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return fmt.Errorf("waiting for the pod cache: %w", ctx.Err())
	}
	grace := cfg.LeakGrace
	if grace <= 0 {
		grace = 5 * time.Minute
	}
	collector := &ipam.LeakCollector{
		Client: store,
		Grace:  grace,
		Lookup: func(_ context.Context, namespace, name string) ([]netip.Addr, bool, error) {
			pod, err := pods.Lister().Pods(namespace).Get(name)
			if apierrors.IsNotFound(err) {
				return nil, false, nil
			}
			if err != nil {
				return nil, false, err
			}
			var ips []netip.Addr
			for _, ip := range pod.Status.PodIPs {
				if a, err := netip.ParseAddr(ip.IP); err == nil {
					ips = append(ips, a)
				}
			}
			return ips, true, nil
		},
	}
	tick := time.NewTicker(leakInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		leaks, err := collector.Collect(ctx)
		if err != nil && ctx.Err() == nil {
			log.Error("collecting leaked addresses", "err", err)
		}
		for _, l := range leaks {
			log.Info("released a leaked pod address", "address", l.Addr, "pod", l.Namespace+"/"+l.Pod, "node", l.Node)
		}
	}
}
