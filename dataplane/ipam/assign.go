package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AssignArgs says who an address is for.
type AssignArgs struct {
	// Handle is the container ID; it is what Release takes back.
	Handle    string
	Node      string
	Namespace string
	Pod       string
}

// Assign gives the handle an address of pool on its node and returns it. A
// handle that already holds an address gets that address again.
//
// The address comes from the node's own blocks, in address order; when they
// are full the node claims a free block of the pool; when none is left it
// borrows an address from another node's block.
func (c *Client) Assign(ctx context.Context, pool *IPPool, args AssignArgs) (netip.Addr, error) {
	geo, err := pool.geometry()
	if err != nil {
		return netip.Addr{}, err
	}
	for {
		if addr, ok, err := c.addrOfHandle(ctx, args.Handle); err != nil || ok {
			return addr, err
		}
		var block *IPAMBlock
		var ordinal int
		err := c.retryOnRace(ctx, func() error {
			var err error
			block, ordinal, err = c.assignOnce(ctx, pool.Name, geo, args, c.blocks.listCached)
			if errors.Is(err, ErrPoolExhausted) {
				// The cache may not have seen a release yet: make sure.
				block, ordinal, err = c.assignOnce(ctx, pool.Name, geo, args, c.blocks.list)
			}
			return err
		})
		if err != nil {
			return netip.Addr{}, fmt.Errorf("assigning an address of pool %s to %s on %s: %w", pool.Name, args.Handle, args.Node, err)
		}
		prefix, err := block.Spec.prefix()
		if err != nil {
			return netip.Addr{}, err
		}
		_, err = c.handles.create(ctx, &IPAMHandle{
			ObjectMeta: metav1.ObjectMeta{Name: HandleName(args.Handle)},
			Spec:       IPAMHandleSpec{HandleID: args.Handle, Block: block.Spec.CIDR, Ordinal: ordinal, Node: args.Node},
		})
		switch {
		case err == nil:
			return addrAt(prefix, ordinal), nil
		case apierrors.IsAlreadyExists(err):
			// A concurrent Assign for the same handle recorded its address
			// first: give ours back and take that one.
			if _, err := c.releaseFromBlock(ctx, block.Name, matchOrdinal(ordinal, args.Handle)); err != nil {
				return netip.Addr{}, err
			}
		default:
			_, releaseErr := c.releaseFromBlock(ctx, block.Name, matchOrdinal(ordinal, args.Handle))
			if releaseErr != nil {
				return netip.Addr{}, fmt.Errorf("%w (and giving the address back: %w)", err, releaseErr)
			}
			return netip.Addr{}, err
		}
	}
}

// assignOnce makes one attempt to take an address for args, returning the
// updated block and the ordinal taken. It fails with Conflict or
// AlreadyExists when another writer got there first.
//
// The blocks come from list. When that is the API server's cache, which is
// fast but may lag, each block is still read afresh before it is written,
// and a block that the list missed shows up as AlreadyExists when claimed.
func (c *Client) assignOnce(ctx context.Context, poolName string, geo poolGeometry, args AssignArgs,
	list func(context.Context) ([]IPAMBlock, error)) (*IPAMBlock, int, error) {
	all, err := list(ctx)
	if err != nil {
		return nil, 0, err
	}
	blocks := inPool(geo, all)
	hasRoom := func(b *IPAMBlock) bool { return len(b.Spec.Free) > 0 }
	var own, others []IPAMBlock
	for _, b := range blocks {
		if b.Spec.Affinity == Affinity(args.Node) {
			own = append(own, b)
		} else {
			others = append(others, b)
		}
	}
	if block, ordinal, ok, err := c.takeFromFirst(ctx, own, args); ok || err != nil {
		return block, ordinal, err
	}
	block, err := c.claimFor(ctx, poolName, geo, args.Node, blocks, hasRoom)
	if err != nil || block != nil {
		if err != nil {
			return nil, 0, err
		}
		return c.takeFrom(ctx, block, args)
	}
	if block, ordinal, ok, err := c.takeFromFirst(ctx, others, args); ok || err != nil {
		return block, ordinal, err
	}
	return nil, 0, fmt.Errorf("%w: all %d blocks of %s are claimed and full", ErrPoolExhausted, len(blocks), geo.cidr)
}

// takeFromFirst takes an address for args from the first of candidates
// that, read afresh from etcd, has room. It reports false when none has.
func (c *Client) takeFromFirst(ctx context.Context, candidates []IPAMBlock, args AssignArgs) (*IPAMBlock, int, bool, error) {
	for _, b := range candidates {
		if len(b.Spec.Free) == 0 {
			continue
		}
		block, err := c.blocks.get(ctx, b.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, 0, false, err
		}
		if len(block.Spec.Free) == 0 {
			continue
		}
		updated, ordinal, err := c.takeFrom(ctx, block, args)
		return updated, ordinal, true, err
	}
	return nil, 0, false, nil
}

// takeFrom takes the first free ordinal of block for args and writes the
// block back, failing with Conflict if it changed since it was read.
func (c *Client) takeFrom(ctx context.Context, block *IPAMBlock, args AssignArgs) (*IPAMBlock, int, error) {
	ordinal, ok := block.Spec.take(Allocation{
		Handle:    args.Handle,
		Kind:      PodAddress,
		Node:      args.Node,
		Namespace: args.Namespace,
		Pod:       args.Pod,
		Since:     c.stamp(),
	})
	if !ok {
		return nil, 0, fmt.Errorf("block %s is full", block.Spec.CIDR)
	}
	updated, err := c.blocks.update(ctx, block)
	if err != nil {
		return nil, 0, err
	}
	return updated, ordinal, nil
}

// claim creates the block cidr with affinity to node. It fails with
// AlreadyExists when another node claimed it first.
func (c *Client) claim(ctx context.Context, poolName string, cidr netip.Prefix, node string) (*IPAMBlock, error) {
	return c.blocks.create(ctx, &IPAMBlock{
		ObjectMeta: metav1.ObjectMeta{Name: BlockName(cidr)},
		Spec:       newBlockSpec(cidr, poolName, node, c.stamp()),
	})
}

// claimFor claims a block of the pool for node, trying the blocks that
// known does not hold in the node's order (see unclaimedBlock). A block
// that turns out to exist already (known was stale) is skipped, unless it
// is the node's own and usable. It returns nil when no block is left.
func (c *Client) claimFor(ctx context.Context, poolName string, geo poolGeometry, node string, known []IPAMBlock, usable func(*IPAMBlock) bool) (*IPAMBlock, error) {
	claimed := make(map[netip.Prefix]bool, len(known))
	for i := range known {
		if p, err := known[i].Spec.prefix(); err == nil {
			claimed[p] = true
		}
	}
	for {
		cidr, ok := geo.unclaimedBlock(node, claimed)
		if !ok {
			return nil, nil
		}
		block, err := c.claim(ctx, poolName, cidr, node)
		if !apierrors.IsAlreadyExists(err) {
			return block, err
		}
		claimed[cidr] = true
		existing, err := c.blocks.get(ctx, BlockName(cidr))
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, err
		case existing.Spec.Affinity == Affinity(node) && usable(existing):
			return existing, nil
		}
	}
}

// inPool keeps the blocks inside the pool, in address order.
func inPool(geo poolGeometry, all []IPAMBlock) []IPAMBlock {
	blocks := slices.DeleteFunc(all, func(b IPAMBlock) bool {
		p, err := b.Spec.prefix()
		return err != nil || !geo.cidr.Overlaps(p) || p.Bits() < geo.cidr.Bits()
	})
	slices.SortFunc(blocks, compareBlocks)
	return blocks
}

// compareBlocks orders blocks by address.
func compareBlocks(a, b IPAMBlock) int {
	pa, _ := netip.ParsePrefix(a.Spec.CIDR)
	pb, _ := netip.ParsePrefix(b.Spec.CIDR)
	return pa.Addr().Compare(pb.Addr())
}

// AddressOf returns the address that handle holds, if it holds one.
func (c *Client) AddressOf(ctx context.Context, handle string) (netip.Addr, bool, error) {
	addr, _, err := c.lookupHandle(ctx, handle)
	return addr, addr.IsValid(), err
}

// addrOfHandle is AddressOf that also removes a handle object whose
// allocation is gone (a Release that stopped half-way).
func (c *Client) addrOfHandle(ctx context.Context, handle string) (netip.Addr, bool, error) {
	addr, stale, err := c.lookupHandle(ctx, handle)
	if err != nil || addr.IsValid() {
		return addr, addr.IsValid(), err
	}
	if stale != nil {
		err := c.handles.delete(ctx, stale.Name, stale.ResourceVersion)
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return netip.Addr{}, false, err
		}
	}
	return netip.Addr{}, false, nil
}

// lookupHandle returns the address that handle holds or, when its handle
// object points at an allocation that is gone, that object.
func (c *Client) lookupHandle(ctx context.Context, handle string) (netip.Addr, *IPAMHandle, error) {
	h, err := c.handles.get(ctx, HandleName(handle))
	if apierrors.IsNotFound(err) {
		return netip.Addr{}, nil, nil
	}
	if err != nil {
		return netip.Addr{}, nil, err
	}
	if h.Spec.HandleID != handle {
		return netip.Addr{}, nil, fmt.Errorf("IPAMHandle %s belongs to handle %q, not %q", h.Name, h.Spec.HandleID, handle)
	}
	prefix, err := netip.ParsePrefix(h.Spec.Block)
	if err != nil {
		return netip.Addr{}, nil, fmt.Errorf("IPAMHandle %s: block %q: %w", h.Name, h.Spec.Block, err)
	}
	block, err := c.blocks.get(ctx, BlockName(prefix))
	if apierrors.IsNotFound(err) {
		return netip.Addr{}, h, nil
	}
	if err != nil {
		return netip.Addr{}, nil, err
	}
	if a, ok := block.Spec.allocation(h.Spec.Ordinal); ok && a.Handle == handle {
		return addrAt(prefix, h.Spec.Ordinal), nil, nil
	}
	return netip.Addr{}, h, nil
}
