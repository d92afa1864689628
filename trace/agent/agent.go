package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// Defaults of the fields of Config left at zero.
const (
	DefaultTTLGrace    = 5 * time.Minute
	DefaultTTLInterval = 30 * time.Second
)

// Config is one node's agent.
type Config struct {
	// Node is the node's name, as in the NetTraces' spec.nodes.
	Node string
	// Dynamic reads and writes the NetTraces; Kube reads the pods.
	Dynamic dynamic.Interface
	Kube    kubernetes.Interface
	// Dataplane traces on the node; NodeDataplane in production.
	Dataplane Dataplane
	// Log receives what the agent does; nothing when nil.
	Log *slog.Logger
	// TTLGrace is how long a NetTrace is kept after its timeout before
	// the agents delete it; DefaultTTLGrace when zero.
	TTLGrace time.Duration
	// TTLInterval is how often the agent looks for such NetTraces;
	// DefaultTTLInterval when zero.
	TTLInterval time.Duration
}

// Agent runs the node's part of the NetTraces that involve it.
type Agent struct {
	cfg    Config
	client *cluster.Client
	log    *slog.Logger
	// busy is held by the trace whose session is armed: the netfilter
	// tracer takes the node's nflog group, so sessions take turns.
	busy chan struct{}

	mu sync.Mutex
	// stopping is set when Run ends: no runner starts any more.
	stopping bool
	runners  map[types.UID]*runner
	// finished are the traces this agent has taken its part in.
	finished map[types.UID]bool
	wg       sync.WaitGroup
	store    cache.Store
}

// New returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Node == "" || cfg.Dynamic == nil || cfg.Kube == nil || cfg.Dataplane == nil {
		return nil, errors.New("an agent needs its node's name, clients and dataplane")
	}
	if cfg.TTLGrace <= 0 {
		cfg.TTLGrace = DefaultTTLGrace
	}
	if cfg.TTLInterval <= 0 {
		cfg.TTLInterval = DefaultTTLInterval
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		cfg:      cfg,
		client:   cluster.NewClient(cfg.Dynamic),
		log:      log.With("node", cfg.Node),
		busy:     make(chan struct{}, 1),
		runners:  map[types.UID]*runner{},
		finished: map[types.UID]bool{},
	}, nil
}

// Run removes what dead tracers left on the node, then runs the node's
// part of every NetTrace that involves it, and deletes expired NetTraces,
// until ctx ends. It then stops every session, restoring the node, and
// tells the traces it left, before it returns.
func (a *Agent) Run(ctx context.Context) error {
	stale, err := a.cfg.Dataplane.Cleanup()
	for _, s := range stale {
		a.log.Info("removed what a dead tracer left", "session", s.ID, "pid", s.PID, "started", s.Started)
	}
	if err != nil {
		return fmt.Errorf("removing what dead tracers left on %s: %w", a.cfg.Node, err)
	}

	informer := dynamicinformer.NewFilteredDynamicInformer(a.cfg.Dynamic, cluster.Resource, "", 0, cache.Indexers{}, nil).Informer()
	a.store = informer.GetStore()
	_, err = informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.observe(ctx, obj) },
		UpdateFunc: func(_, obj any) { a.observe(ctx, obj) },
		DeleteFunc: a.forget,
	})
	if err != nil {
		return fmt.Errorf("watching NetTraces: %w", err)
	}
	go informer.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		a.stop() // stopped before the first list came
		return nil
	}
	a.log.Info("watching NetTraces")

	ttl := time.NewTicker(a.cfg.TTLInterval)
	defer ttl.Stop()
	for {
		select {
		case <-ttl.C:
			a.collectGarbage(ctx, time.Now())
		case <-ctx.Done():
			a.stop()
			return nil
		}
	}
}

// stop waits for the runners, which stop their sessions as ctx ended.
func (a *Agent) stop() {
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	a.wg.Wait()
}

// observe hands a NetTrace that involves the node to its runner, starting
// one when the node has not taken its part yet.
func (a *Agent) observe(ctx context.Context, obj any) {
	nt, ok := decode(obj)
	if !ok || !slices.Contains(nt.Spec.Nodes, a.cfg.Node) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping || ctx.Err() != nil {
		return
	}
	if r, ok := a.runners[nt.UID]; ok {
		r.update(nt)
		return
	}
	if a.finished[nt.UID] || nt.Status.Final() {
		a.finished[nt.UID] = true
		return
	}
	if e := nt.Status.Node(a.cfg.Node); e != nil {
		// This node took part before the agent restarted: what it saw
		// then is lost, and the trace is told so.
		a.finished[nt.UID] = true
		if e.Armed && !e.Done {
			a.wg.Go(func() { a.reportLost(ctx, nt) })
		}
		return
	}
	r := newRunner(a, nt)
	a.runners[nt.UID] = r
	a.wg.Go(func() {
		r.run(ctx)
		a.mu.Lock()
		delete(a.runners, nt.UID)
		a.finished[nt.UID] = true
		a.mu.Unlock()
	})
}

// forget stops the runner of a deleted NetTrace.
func (a *Agent) forget(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	nt, ok := decode(obj)
	if !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.runners[nt.UID]; ok {
		r.cancel(errDeleted)
	}
	delete(a.finished, nt.UID)
}

// reportLost tells a trace that this node's agent restarted while it was
// armed for it.
func (a *Agent) reportLost(ctx context.Context, nt *cluster.NetTrace) {
	_, err := a.client.UpdateStatus(ctx, nt.Namespace, nt.Name, func(nt *cluster.NetTrace) bool {
		e := nt.Status.SetNode(a.cfg.Node)
		if e.Done {
			return false
		}
		e.Done = true
		e.Error = "the agent restarted during the trace: what it saw on " + a.cfg.Node + " is lost"
		completePhase(nt)
		return true
	})
	if err != nil {
		a.log.Error("reporting a trace lost in a restart", "trace", nt.Namespace+"/"+nt.Name, "err", err)
	}
}

// decode converts an informer object into a NetTrace.
func decode(obj any) (*cluster.NetTrace, bool) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, false
	}
	nt, err := cluster.FromUnstructured(u)
	return nt, err == nil
}

// collectGarbage deletes the NetTraces whose timeout and grace have passed:
// their plugin is gone without deleting them. Every agent does it; a
// NetTrace already deleted by another is no error.
func (a *Agent) collectGarbage(ctx context.Context, now time.Time) {
	for _, obj := range a.store.List() {
		nt, ok := decode(obj)
		if !ok {
			continue
		}
		if now.Before(nt.Deadline(nt.CreationTimestamp.Time).Add(a.cfg.TTLGrace)) {
			continue
		}
		if err := a.client.Delete(ctx, nt.Namespace, nt.Name, nt.UID); err != nil {
			a.log.Error("deleting an expired NetTrace", "trace", nt.Namespace+"/"+nt.Name, "err", err)
			continue
		}
		a.log.Info("deleted an expired NetTrace", "trace", nt.Namespace+"/"+nt.Name,
			"created", nt.CreationTimestamp.Time)
	}
}
