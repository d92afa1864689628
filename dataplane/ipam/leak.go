package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// PodLookup tells whether the pod namespace/name exists and, if so, the
// addresses it has been given (none while it is still being set up).
type PodLookup func(ctx context.Context, namespace, name string) (ips []netip.Addr, found bool, err error)

// Leak is a pod address released by the LeakCollector.
type Leak struct {
	Addr      netip.Addr
	Handle    string
	Node      string
	Namespace string
	Pod       string
}

// LeakCollector releases pod addresses that outlived their pod: addresses
// whose pod does not exist, or exists with other addresses, for longer than
// Grace. It remembers when it first saw each suspect, so it must be kept
// between runs (the node daemon or a controller calls Collect periodically).
type LeakCollector struct {
	Client *Client
	Lookup PodLookup
	// Grace is how long an address must look leaked, and have been held,
	// before it is released. It covers pods that are being created.
	Grace time.Duration

	suspects map[leakKey]time.Time
}

// leakKey identifies one allocation.
type leakKey struct {
	block   string
	ordinal int
	handle  string
}

// Collect checks every pod address once and releases those that have
// looked leaked for longer than Grace.
func (g *LeakCollector) Collect(ctx context.Context) ([]Leak, error) {
	now := g.Client.now()
	blocks, err := g.Client.blocks.list(ctx)
	if err != nil {
		return nil, err
	}
	seen := make(map[leakKey]time.Time)
	var leaks []Leak
	var errs []error
	for _, b := range blocks {
		prefix, err := b.Spec.prefix()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range b.Spec.Allocations {
			if a.Kind != PodAddress {
				continue
			}
			addr := addrAt(prefix, a.Ordinal)
			ips, found, err := g.Lookup(ctx, a.Namespace, a.Pod)
			if err != nil {
				errs = append(errs, fmt.Errorf("looking up pod %s/%s: %w", a.Namespace, a.Pod, err))
				continue
			}
			if found && (len(ips) == 0 || slices.Contains(ips, addr)) {
				continue
			}
			key := leakKey{b.Name, a.Ordinal, a.Handle}
			first, ok := g.suspects[key]
			if !ok {
				first = now
			}
			seen[key] = first
			if now.Sub(first) < g.Grace || now.Sub(a.Since.Time) < g.Grace {
				continue
			}
			if err := g.release(ctx, b.Name, a); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(seen, key)
			leaks = append(leaks, Leak{Addr: addr, Handle: a.Handle, Node: a.Node, Namespace: a.Namespace, Pod: a.Pod})
		}
	}
	g.suspects = seen
	return leaks, errors.Join(errs...)
}

// release gives back one leaked allocation and the handle pointing at it.
func (g *LeakCollector) release(ctx context.Context, blockName string, a Allocation) error {
	if _, err := g.Client.releaseFromBlock(ctx, blockName, matchOrdinal(a.Ordinal, a.Handle)); err != nil {
		return err
	}
	h, err := g.Client.handles.get(ctx, HandleName(a.Handle))
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if p, err := netip.ParsePrefix(h.Spec.Block); err != nil || BlockName(p) != blockName ||
		h.Spec.HandleID != a.Handle || h.Spec.Ordinal != a.Ordinal {
		return nil
	}
	if err := g.Client.handles.delete(ctx, h.Name, h.ResourceVersion); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return err
	}
	return nil
}
