package ipam

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// tunnelOrdinal is the ordinal reserved in every block for the tunnel of the
// node that claimed it.
const tunnelOrdinal = 0

// TunnelHandle is the handle that holds the tunnel address of node.
func TunnelHandle(node string) string { return "tunnel." + node }

// Affinity is the IPAMBlockSpec.Affinity of the blocks claimed by node.
func Affinity(node string) string { return "host:" + node }

// BlockName is the object name of the block with the given CIDR:
// 172.16.116.0/24 is 172-16-116-0-24.
func BlockName(cidr netip.Prefix) string {
	return strings.NewReplacer(".", "-", "/", "-").Replace(cidr.String())
}

// maxNameLen is the longest object name the API server accepts.
const maxNameLen = 253

// HandleName is the object name of the IPAMHandle of handle. A handle that is
// already a valid name (a lower-case container ID) is its own name; any other
// is lower-cased, has its other characters replaced by dashes, and gets a hash
// of the original appended so that distinct handles keep distinct names.
func HandleName(handle string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(handle) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-.")
	if name == handle && len(name) <= maxNameLen {
		return name
	}
	sum := sha256.Sum256([]byte(handle))
	suffix := "-" + hex.EncodeToString(sum[:5])
	if len(name) > maxNameLen-len(suffix) {
		name = strings.TrimRight(name[:maxNameLen-len(suffix)], "-.")
	}
	if name == "" {
		return "h" + suffix
	}
	return name + suffix
}

// blockSizeAddrs is the number of addresses in block.
func blockSizeAddrs(block netip.Prefix) int { return 1 << (32 - block.Bits()) }

// addrAt is the address at ordinal in block.
func addrAt(block netip.Prefix, ordinal int) netip.Addr {
	base := block.Addr().As4()
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], binary.BigEndian.Uint32(base[:])+uint32(ordinal))
	return netip.AddrFrom4(out)
}

// poolGeometry is a validated pool: its network and how it is cut.
type poolGeometry struct {
	cidr      netip.Prefix
	blockSize int
}

// blockCount is the number of blocks in the pool.
func (g poolGeometry) blockCount() uint64 { return 1 << (g.blockSize - g.cidr.Bits()) }

// blockAt is the block with the given index in the pool.
func (g poolGeometry) blockAt(index uint64) netip.Prefix {
	first := netip.PrefixFrom(g.cidr.Addr(), g.blockSize)
	return netip.PrefixFrom(addrAt(first, int(index<<(32-g.blockSize))), g.blockSize)
}

// unclaimedBlock is the first block of the pool, counting from a start that
// depends on node (so that nodes spread over the pool instead of all racing
// for its first block), that is not in claimed.
func (g poolGeometry) unclaimedBlock(node string, claimed map[netip.Prefix]bool) (netip.Prefix, bool) {
	count := g.blockCount()
	if uint64(len(claimed)) >= count {
		return netip.Prefix{}, false
	}
	h := fnv.New64a()
	h.Write([]byte(node))
	start := h.Sum64() % count
	for i := range count {
		if b := g.blockAt((start + i) % count); !claimed[b] {
			return b, true
		}
	}
	return netip.Prefix{}, false
}

// newBlockSpec is a block of pool just claimed by node: ordinal 0 holds the
// node's tunnel address and every other ordinal is free, in address order.
func newBlockSpec(cidr netip.Prefix, pool, node string, since metav1.Time) IPAMBlockSpec {
	free := make([]int, 0, blockSizeAddrs(cidr)-1)
	for o := tunnelOrdinal + 1; o < blockSizeAddrs(cidr); o++ {
		free = append(free, o)
	}
	return IPAMBlockSpec{
		CIDR:     cidr.String(),
		Pool:     pool,
		Affinity: Affinity(node),
		Free:     free,
		Allocations: []Allocation{{
			Ordinal: tunnelOrdinal,
			Handle:  TunnelHandle(node),
			Kind:    TunnelAddress,
			Node:    node,
			Since:   since,
		}},
	}
}

// prefix is the block's CIDR.
func (s *IPAMBlockSpec) prefix() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s.CIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("block CIDR %q: %w", s.CIDR, err)
	}
	return p, nil
}

// inUse is the number of the block's addresses that are not free.
func (s *IPAMBlockSpec) inUse(size int) int { return size - len(s.Free) }

// take hands out the ordinal at the front of the free list to a, and records
// the allocation. It reports false when the block is full.
func (s *IPAMBlockSpec) take(a Allocation) (int, bool) {
	if len(s.Free) == 0 {
		return 0, false
	}
	a.Ordinal = s.Free[0]
	s.Free = s.Free[1:]
	i, _ := slices.BinarySearchFunc(s.Allocations, a.Ordinal, func(x Allocation, o int) int { return x.Ordinal - o })
	s.Allocations = slices.Insert(s.Allocations, i, a)
	return a.Ordinal, true
}

// release removes the allocations that match and puts their ordinals at the
// back of the free list, returning what was removed.
func (s *IPAMBlockSpec) release(match func(Allocation) bool) []Allocation {
	var released []Allocation
	s.Allocations = slices.DeleteFunc(s.Allocations, func(a Allocation) bool {
		if match(a) {
			released = append(released, a)
			s.Free = append(s.Free, a.Ordinal)
			return true
		}
		return false
	})
	return released
}

// allocation is the allocation at ordinal, if any.
func (s *IPAMBlockSpec) allocation(ordinal int) (Allocation, bool) {
	i, ok := slices.BinarySearchFunc(s.Allocations, ordinal, func(x Allocation, o int) int { return x.Ordinal - o })
	if !ok {
		return Allocation{}, false
	}
	return s.Allocations[i], true
}
