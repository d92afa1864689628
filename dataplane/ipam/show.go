package ipam

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"text/tabwriter"
)

// Usage is how many addresses of a pool or block are in use.
type Usage struct {
	CIDR  netip.Prefix
	Total int
	InUse int
}

// Free is the number of addresses not in use.
func (u Usage) Free() int { return u.Total - u.InUse }

// PoolUsage is the usage of one pool and of each of its claimed blocks, in
// address order.
type PoolUsage struct {
	Name   string
	Usage  Usage
	Blocks []Usage
}

// Usage reports the usage of every valid pool, in address order. Reserved
// tunnel addresses count as in use; the unclaimed part of a pool as free.
func (c *Client) Usage(ctx context.Context) ([]PoolUsage, error) {
	pools, err := c.pools.list(ctx)
	if err != nil {
		return nil, err
	}
	all, err := c.blocks.list(ctx)
	if err != nil {
		return nil, err
	}
	var out []PoolUsage
	for _, p := range pools {
		geo, err := p.geometry()
		if err != nil {
			continue
		}
		blocks := inPool(geo, slices.Clone(all))
		pu := PoolUsage{Name: p.Name, Usage: Usage{CIDR: geo.cidr, Total: 1 << (32 - geo.cidr.Bits())}}
		for _, b := range blocks {
			prefix, err := b.Spec.prefix()
			if err != nil {
				return nil, err
			}
			size := blockSizeAddrs(prefix)
			bu := Usage{CIDR: prefix, Total: size, InUse: b.Spec.inUse(size)}
			pu.Usage.InUse += bu.InUse
			pu.Blocks = append(pu.Blocks, bu)
		}
		out = append(out, pu)
	}
	slices.SortFunc(out, func(a, b PoolUsage) int { return a.Usage.CIDR.Addr().Compare(b.Usage.CIDR.Addr()) })
	return out, nil
}

// Show prints the usage of every pool, and with showBlocks of every claimed
// block, as `kubectl nettrace ipam show [--show-blocks]` does:
//
//	GROUPING  CIDR             IPS TOTAL  IPS IN USE  IPS FREE
//	IP Pool   172.16.0.0/16    65536      6 (0%)      65530 (100%)
//	Block     172.16.116.0/24  256        4 (2%)      252 (98%)
func Show(ctx context.Context, c *Client, w io.Writer, showBlocks bool) error {
	pools, err := c.Usage(ctx)
	if err != nil {
		return err
	}
	return writeTable(w, pools, showBlocks)
}

// writeTable prints the usage table of pools.
func writeTable(w io.Writer, pools []PoolUsage, showBlocks bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUPING\tCIDR\tIPS TOTAL\tIPS IN USE\tIPS FREE")
	for _, p := range pools {
		writeUsage(tw, "IP Pool", p.Usage)
		if showBlocks {
			for _, b := range p.Blocks {
				writeUsage(tw, "Block", b)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing the IPAM table: %w", err)
	}
	return nil
}

func writeUsage(w io.Writer, grouping string, u Usage) {
	fmt.Fprintf(w, "%s\t%s\t%d\t%d (%s)\t%d (%s)\n",
		grouping, u.CIDR, u.Total, u.InUse, percent(u.InUse, u.Total), u.Free(), percent(u.Free(), u.Total))
}

// percent is part of total as a rounded percentage, such as "2%".
func percent(part, total int) string {
	return fmt.Sprintf("%d%%", int(math.Round(100*float64(part)/float64(total))))
}
