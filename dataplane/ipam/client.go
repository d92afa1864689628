package ipam

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// Client is the IPAM datastore: the nettrace.dev resources of one API server.
type Client struct {
	pools   resource[IPPool]
	blocks  resource[IPAMBlock]
	handles resource[IPAMHandle]
	// raceRetry paces the retries of a write that lost a race.
	raceRetry retryPolicy
	// now stamps allocations; tests replace it.
	now func() time.Time
}

// NewClient returns a datastore client that works through dyn.
func NewClient(dyn dynamic.Interface) *Client {
	return &Client{
		pools:     resource[IPPool]{dyn.Resource(PoolResource), "IPPool"},
		blocks:    resource[IPAMBlock]{dyn.Resource(BlockResource), "IPAMBlock"},
		handles:   resource[IPAMHandle]{dyn.Resource(HandleResource), "IPAMHandle"},
		raceRetry: retryPolicy{attempts: 100, first: 5 * time.Millisecond, max: 100 * time.Millisecond},
		now:       time.Now,
	}
}

// NewClientForConfig returns a datastore client for the API server of cfg.
// A cfg that leaves the client-side rate limit at its default (5 requests a
// second) gets a higher one: retries after Conflict come in bursts.
func NewClientForConfig(cfg *rest.Config) (*Client, error) {
	if cfg.QPS == 0 && cfg.RateLimiter == nil {
		cfg = rest.CopyConfig(cfg)
		cfg.QPS, cfg.Burst = 100, 200
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the IPAM datastore client: %w", err)
	}
	return NewClient(dyn), nil
}

// Ping checks that the API server answers and serves the IPAM resources.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.pools.client.List(ctx, metav1.ListOptions{ResourceVersion: "0", Limit: 1})
	if err != nil {
		return fmt.Errorf("listing IPPools: %w", err)
	}
	return nil
}

// retryOnRace runs write until it succeeds, fails for a reason other than a
// lost race (Conflict on resourceVersion, or AlreadyExists on a create), or
// has lost too many races. Each retry waits a random time that grows with
// the number of races lost, so that the writers spread out.
func (c *Client) retryOnRace(ctx context.Context, write func() error) error {
	wait := c.raceRetry.first
	for attempt := 1; ; attempt++ {
		err := write()
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
			return err
		}
		if attempt == c.raceRetry.attempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (after %d attempts: %w)", ctx.Err(), attempt, err)
		case <-time.After(wait/2 + rand.N(wait)):
		}
		wait = min(wait*3/2, c.raceRetry.max)
	}
}

// retryPolicy bounds the retries of a write that lost a race.
type retryPolicy struct {
	attempts int
	// first is the mean wait before the first retry; it grows by half at
	// each retry, up to max.
	first, max time.Duration
}

// stamp is the time recorded on a new allocation.
func (c *Client) stamp() metav1.Time { return metav1.NewTime(c.now().UTC().Truncate(time.Second)) }

// resource reads and writes the objects of one kind as Go structs.
type resource[T any] struct {
	client dynamic.NamespaceableResourceInterface
	kind   string
}

func (r resource[T]) get(ctx context.Context, name string) (*T, error) {
	u, err := r.client.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("getting %s %s: %w", r.kind, name, err)
	}
	return fromUnstructured[T](u)
}

// list lists the objects as they are now: the API server makes sure its
// cache has caught up with etcd first, which can take tens of milliseconds
// after a write.
func (r resource[T]) list(ctx context.Context) ([]T, error) {
	return r.listWith(ctx, metav1.ListOptions{})
}

// listCached lists the objects from the API server's cache at once. The
// list may miss the latest writes: callers read what they act on again, or
// rely on a conflict to tell them.
func (r resource[T]) listCached(ctx context.Context) ([]T, error) {
	return r.listWith(ctx, metav1.ListOptions{ResourceVersion: "0"})
}

func (r resource[T]) listWith(ctx context.Context, opts metav1.ListOptions) ([]T, error) {
	l, err := r.client.List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing %ss: %w", r.kind, err)
	}
	out := make([]T, 0, len(l.Items))
	for i := range l.Items {
		obj, err := fromUnstructured[T](&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *obj)
	}
	return out, nil
}

func (r resource[T]) create(ctx context.Context, obj *T) (*T, error) {
	u, err := r.toUnstructured(obj)
	if err != nil {
		return nil, err
	}
	created, err := r.client.Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating %s %s: %w", r.kind, u.GetName(), err)
	}
	return fromUnstructured[T](created)
}

// update writes obj if its resourceVersion is still the stored one, and
// fails with Conflict otherwise.
func (r resource[T]) update(ctx context.Context, obj *T) (*T, error) {
	u, err := r.toUnstructured(obj)
	if err != nil {
		return nil, err
	}
	updated, err := r.client.Update(ctx, u, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("updating %s %s: %w", r.kind, u.GetName(), err)
	}
	return fromUnstructured[T](updated)
}

// delete removes the object; with a resourceVersion, only if it is still
// that version.
func (r resource[T]) delete(ctx context.Context, name, resourceVersion string) error {
	var opts metav1.DeleteOptions
	if resourceVersion != "" {
		opts.Preconditions = &metav1.Preconditions{ResourceVersion: &resourceVersion}
	}
	if err := r.client.Delete(ctx, name, opts); err != nil {
		return fmt.Errorf("deleting %s %s: %w", r.kind, name, err)
	}
	return nil
}

func (r resource[T]) toUnstructured(obj *T) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", r.kind, err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(schema.GroupVersion{Group: Group, Version: Version}.String())
	u.SetKind(r.kind)
	return u, nil
}

func fromUnstructured[T any](u *unstructured.Unstructured) (*T, error) {
	obj := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
		return nil, fmt.Errorf("decoding %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return obj, nil
}

// Blocks lists every IPAMBlock, of every pool.
func (c *Client) Blocks(ctx context.Context) ([]IPAMBlock, error) { return c.blocks.list(ctx) }

// Handles lists every IPAMHandle.
func (c *Client) Handles(ctx context.Context) ([]IPAMHandle, error) { return c.handles.list(ctx) }
