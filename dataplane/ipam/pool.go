package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The defaults of a pool, as the CRD fills them in.
const (
	DefaultPoolName  = "default-ipv4-ippool"
	DefaultPoolCIDR  = "172.16.0.0/16"
	DefaultBlockSize = 26
)

// The limits on BlockSize: a block of /20 has 4096 addresses, the most a
// block's free list may hold; a block of /31 has one address besides its
// tunnel address.
const (
	minBlockSize = 20
	maxBlockSize = 31
)

// ErrPoolNotFound is returned when the requested IPPool does not exist.
var ErrPoolNotFound = errors.New("IPPool not found")

// ErrInvalidPool is returned for a pool, or a pool selector, that is not a
// usable IPv4 network.
var ErrInvalidPool = errors.New("invalid IPPool")

// ErrPoolExhausted is returned when no address is free in any block of the
// pool and no block is left to claim.
var ErrPoolExhausted = errors.New("IPPool exhausted")

// DefaultPool is the pool that a cluster gets when nothing else is
// configured: 172.16.0.0/16 in blocks of /26, with IPIP.
func DefaultPool() *IPPool {
	return &IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: DefaultPoolName},
		Spec:       IPPoolSpec{CIDR: DefaultPoolCIDR, BlockSize: DefaultBlockSize, Encapsulation: IPIP},
	}
}

// geometry validates the pool and returns its network and block size.
func (p *IPPool) geometry() (poolGeometry, error) {
	cidr, err := parseNetwork(p.Spec.CIDR)
	if err != nil {
		return poolGeometry{}, fmt.Errorf("%w %s: %w", ErrInvalidPool, p.Name, err)
	}
	if p.Spec.BlockSize < max(cidr.Bits(), minBlockSize) || p.Spec.BlockSize > maxBlockSize {
		return poolGeometry{}, fmt.Errorf("%w %s: blockSize %d is outside [%d, %d] for %s",
			ErrInvalidPool, p.Name, p.Spec.BlockSize, max(cidr.Bits(), minBlockSize), maxBlockSize, cidr)
	}
	return poolGeometry{cidr: cidr, blockSize: p.Spec.BlockSize}, nil
}

// Validate reports whether the pool is a usable IPv4 network cut into
// blocks of a supported size.
func (p *IPPool) Validate() error {
	_, err := p.geometry()
	return err
}

// parseNetwork parses an IPv4 network address in CIDR notation.
func parseNetwork(s string) (netip.Prefix, error) {
	cidr, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("CIDR %q: %w", s, err)
	case !cidr.Addr().Is4():
		return netip.Prefix{}, fmt.Errorf("CIDR %q is not IPv4", s)
	case cidr.Masked() != cidr:
		return netip.Prefix{}, fmt.Errorf("CIDR %q has host bits set (the network is %s)", s, cidr.Masked())
	}
	return cidr, nil
}

// FindPool returns the pool named by selector, which is either an IPPool's
// name or the CIDR of an IPPool (as in 172.16.0.0/16). The pool is validated.
func (c *Client) FindPool(ctx context.Context, selector string) (*IPPool, error) {
	var pool *IPPool
	if strings.Contains(selector, "/") {
		cidr, err := parseNetwork(selector)
		if err != nil {
			return nil, fmt.Errorf("%w: pool %w", ErrInvalidPool, err)
		}
		// Pools change seldom: the cache is asked first, the API server
		// only when the cache does not know the pool (yet).
		for _, list := range []func(context.Context) ([]IPPool, error){c.pools.listCached, c.pools.list} {
			pools, err := list(ctx)
			if err != nil {
				return nil, err
			}
			if i := slices.IndexFunc(pools, func(p IPPool) bool { return p.Spec.CIDR == cidr.String() }); i >= 0 {
				pool = &pools[i]
				break
			}
		}
		if pool == nil {
			return nil, fmt.Errorf("%w: no IPPool has cidr %s", ErrPoolNotFound, cidr)
		}
	} else {
		p, err := c.pools.get(ctx, selector)
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: %q", ErrPoolNotFound, selector)
		}
		if err != nil {
			return nil, err
		}
		pool = p
	}
	if err := pool.Validate(); err != nil {
		return nil, err
	}
	return pool, nil
}

// EnsurePool creates pool unless an IPPool of that name exists, and returns
// the pool as stored.
func (c *Client) EnsurePool(ctx context.Context, pool *IPPool) (*IPPool, error) {
	if err := pool.Validate(); err != nil {
		return nil, err
	}
	created, err := c.pools.create(ctx, pool)
	if apierrors.IsAlreadyExists(err) {
		return c.FindPool(ctx, pool.Name)
	}
	return created, err
}
