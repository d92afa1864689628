package ipam

import (
	"context"
	"net/netip"
	"time"
)

// SetClock makes c stamp allocations, and leak collectors using c judge
// them, by now.
func (c *Client) SetClock(now func() time.Time) { c.now = now }

// TakeWithoutHandle does what Assign does up to, not including, recording
// the handle: the state that an Assign killed half-way leaves behind.
func (c *Client) TakeWithoutHandle(ctx context.Context, pool *IPPool, args AssignArgs) (netip.Addr, error) {
	geo, err := pool.geometry()
	if err != nil {
		return netip.Addr{}, err
	}
	block, ordinal, err := c.assignOnce(ctx, pool.Name, geo, args, c.blocks.list)
	if err != nil {
		return netip.Addr{}, err
	}
	prefix, err := block.Spec.prefix()
	if err != nil {
		return netip.Addr{}, err
	}
	return addrAt(prefix, ordinal), nil
}

// CreateHandle writes a handle object as it is, to make states that only a
// crash leaves behind.
func (c *Client) CreateHandle(ctx context.Context, h *IPAMHandle) error {
	_, err := c.handles.create(ctx, h)
	return err
}
