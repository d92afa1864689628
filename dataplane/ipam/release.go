package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Release gives back the address held by handle (a container ID) and
// returns it. Releasing a handle that holds nothing is not an error.
func (c *Client) Release(ctx context.Context, handle string) ([]netip.Addr, error) {
	h, err := c.handles.get(ctx, HandleName(handle))
	switch {
	case err == nil && h.Spec.HandleID == handle:
		prefix, err := netip.ParsePrefix(h.Spec.Block)
		if err != nil {
			return nil, fmt.Errorf("IPAMHandle %s: block %q: %w", h.Name, h.Spec.Block, err)
		}
		released, err := c.releaseFromBlock(ctx, BlockName(prefix), matchOrdinal(h.Spec.Ordinal, handle))
		if err != nil {
			return nil, err
		}
		if err := c.handles.delete(ctx, h.Name, ""); err != nil && !apierrors.IsNotFound(err) {
			return released, err
		}
		return released, nil
	case err == nil, apierrors.IsNotFound(err):
		// No record of the handle: an Assign that stopped between taking
		// the address and recording the handle leaves only the allocation.
		return c.releaseMatching(ctx, func(a Allocation) bool { return a.Kind == PodAddress && a.Handle == handle })
	default:
		return nil, err
	}
}

// ReleaseExcept releases every pod address assigned on node whose handle
// keep does not accept, and removes their handles. It is the CNI GC: keep
// accepts the container IDs of the attachments that are still valid.
func (c *Client) ReleaseExcept(ctx context.Context, node string, keep func(handle string) bool) ([]netip.Addr, error) {
	released, err := c.releaseMatching(ctx, func(a Allocation) bool {
		return a.Kind == PodAddress && a.Node == node && !keep(a.Handle)
	})
	if err != nil {
		return released, err
	}
	handles, err := c.handles.list(ctx)
	if err != nil {
		return released, err
	}
	var errs []error
	for _, h := range handles {
		if h.Spec.Node != node || h.Spec.HandleID == TunnelHandle(node) || keep(h.Spec.HandleID) {
			continue
		}
		if err := c.handles.delete(ctx, h.Name, ""); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return released, errors.Join(errs...)
}

// releaseMatching releases the allocations that match, in every block.
func (c *Client) releaseMatching(ctx context.Context, match func(Allocation) bool) ([]netip.Addr, error) {
	blocks, err := c.blocks.list(ctx)
	if err != nil {
		return nil, err
	}
	var released []netip.Addr
	var errs []error
	for _, b := range blocks {
		if !slices.ContainsFunc(b.Spec.Allocations, match) {
			continue
		}
		addrs, err := c.releaseFromBlock(ctx, b.Name, match)
		released = append(released, addrs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return released, errors.Join(errs...)
}

// releaseFromBlock releases the allocations of the named block that match,
// retrying when the block changes under it. A block that does not exist
// holds nothing to release.
func (c *Client) releaseFromBlock(ctx context.Context, name string, match func(Allocation) bool) ([]netip.Addr, error) {
	var released []netip.Addr
	err := c.retryOnRace(ctx, func() error {
		released = nil
		block, err := c.blocks.get(ctx, name)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		prefix, err := block.Spec.prefix()
		if err != nil {
			return err
		}
		gone := block.Spec.release(match)
		if len(gone) == 0 {
			return nil
		}
		if _, err := c.blocks.update(ctx, block); err != nil {
			return err
		}
		for _, a := range gone {
			released = append(released, addrAt(prefix, a.Ordinal))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("releasing addresses of block %s: %w", name, err)
	}
	return released, nil
}

// matchOrdinal matches the allocation of handle at ordinal.
func matchOrdinal(ordinal int, handle string) func(Allocation) bool {
	return func(a Allocation) bool { return a.Ordinal == ordinal && a.Handle == handle }
}
