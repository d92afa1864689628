package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EnsureTunnelAddress returns the tunnel address of node: the first address
// of the node's first block in pool, reserved when the block was claimed
// (172.16.158.0 for the block 172.16.158.0/24). A node without a block
// claims one. The choice is recorded in the handle tunnel.<node>, so it
// stays the same as the node claims more blocks.
func (c *Client) EnsureTunnelAddress(ctx context.Context, pool *IPPool, node string) (netip.Addr, error) {
	geo, err := pool.geometry()
	if err != nil {
		return netip.Addr{}, err
	}
	handle := TunnelHandle(node)
	for {
		if addr, ok, err := c.addrOfHandle(ctx, handle); err != nil || ok {
			return addr, err
		}
		var block *IPAMBlock
		err := c.retryOnRace(ctx, func() error {
			var err error
			block, err = c.firstBlock(ctx, pool.Name, geo, node, c.blocks.listCached)
			if errors.Is(err, ErrPoolExhausted) {
				block, err = c.firstBlock(ctx, pool.Name, geo, node, c.blocks.list)
			}
			return err
		})
		if err != nil {
			return netip.Addr{}, fmt.Errorf("finding a block for the tunnel of %s: %w", node, err)
		}
		prefix, err := block.Spec.prefix()
		if err != nil {
			return netip.Addr{}, err
		}
		_, err = c.handles.create(ctx, &IPAMHandle{
			ObjectMeta: metav1.ObjectMeta{Name: HandleName(handle)},
			Spec:       IPAMHandleSpec{HandleID: handle, Block: block.Spec.CIDR, Ordinal: tunnelOrdinal, Node: node},
		})
		if err == nil {
			return addrAt(prefix, tunnelOrdinal), nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return netip.Addr{}, err
		}
	}
}

// firstBlock returns the node's first block in address order that still
// holds its tunnel reservation, claiming a block when there is none. The
// blocks come from list, as in assignOnce.
func (c *Client) firstBlock(ctx context.Context, poolName string, geo poolGeometry, node string,
	list func(context.Context) ([]IPAMBlock, error)) (*IPAMBlock, error) {
	all, err := list(ctx)
	if err != nil {
		return nil, err
	}
	blocks := inPool(geo, all)
	holdsTunnel := func(b *IPAMBlock) bool {
		a, ok := b.Spec.allocation(tunnelOrdinal)
		return ok && a.Handle == TunnelHandle(node)
	}
	for i := range blocks {
		if blocks[i].Spec.Affinity == Affinity(node) && holdsTunnel(&blocks[i]) {
			return &blocks[i], nil
		}
	}
	block, err := c.claimFor(ctx, poolName, geo, node, blocks, holdsTunnel)
	if err != nil {
		return nil, err
	}
	if block == nil {
		return nil, fmt.Errorf("%w: no block of %s is left to claim", ErrPoolExhausted, geo.cidr)
	}
	return block, nil
}

// ReleaseEmptyBlocks gives back to the pool the blocks of node that hold no
// address but their tunnel reservation, except the block of the node's
// tunnel address, and returns their CIDRs. A block that changes meanwhile is
// kept.
func (c *Client) ReleaseEmptyBlocks(ctx context.Context, node string) ([]netip.Prefix, error) {
	keep := ""
	if h, err := c.handles.get(ctx, HandleName(TunnelHandle(node))); err == nil {
		keep = h.Spec.Block
	} else if !apierrors.IsNotFound(err) {
		return nil, err
	}
	blocks, err := c.blocks.list(ctx)
	if err != nil {
		return nil, err
	}
	var released []netip.Prefix
	for _, b := range blocks {
		if b.Spec.Affinity != Affinity(node) || b.Spec.CIDR == keep || !onlyTunnel(b.Spec.Allocations) {
			continue
		}
		prefix, err := b.Spec.prefix()
		if err != nil {
			return released, err
		}
		err = c.blocks.delete(ctx, b.Name, b.ResourceVersion)
		switch {
		case err == nil:
			released = append(released, prefix)
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		default:
			return released, err
		}
	}
	return released, nil
}

// onlyTunnel reports whether allocations hold nothing but tunnel addresses.
func onlyTunnel(allocations []Allocation) bool {
	for _, a := range allocations {
		if a.Kind != TunnelAddress {
			return false
		}
	}
	return true
}
