package capture

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring geometry. Blocks are retired to userspace when full or after
// retireTimeout, which bounds how late a lone packet is seen. Small blocks
// hand packets over sooner and let the kernel fill one while userspace
// reads another; whole packets need blocks as large as a GSO packet.
const (
	headerBlockSize = 32 << 10
	wholeBlockSize  = 128 << 10
	frameSize       = 2048 // TPACKET_V3 packs frames of any size; this only sizes the request
	retireTimeout   = 10 * time.Millisecond
	// stopGrace is how long a stopping capture waits for packets still on
	// their way, and stopLimit how long it waits at most for the kernel to
	// hand over a block that holds packets, which a loaded machine's retire
	// timer can delay.
	stopGrace = 2 * retireTimeout
	stopLimit = 25 * retireTimeout
	// sllOffset is where the kernel puts the packet's sockaddr_ll:
	// TPACKET_ALIGN(sizeof(struct tpacket3_hdr)).
	sllOffset = (unix.SizeofTpacket3Hdr + 15) &^ 15
	// sllPacketType is the offset of sll_pkttype in sockaddr_ll.
	sllPacketType = 10
	// blockStatus is the offset of hdr.bh1.block_status in a block.
	blockStatus = 8
)

// ring is a TPACKET_V3 receive ring mapped from a packet socket: the kernel
// fills blocks of packets and hands each to userspace by setting its
// status, and userspace hands it back when done.
type ring struct {
	mem       []byte
	blockSize int
	blocks    int
	current   int
}

// frame is one packet in the ring. Data points into the ring and is valid
// only until the block is released.
type frame struct {
	time     time.Time
	data     []byte
	length   int
	outgoing bool
}

// mapRing sets up a ring of about size bytes on the packet socket fd, which
// must not be bound yet; whole says packets are kept whole, and retire is
// how long the kernel keeps a block that holds packets.
func mapRing(fd, size int, whole bool, retire time.Duration) (*ring, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return nil, fmt.Errorf("setting TPACKET_V3: %w", err)
	}
	blockSize := headerBlockSize
	if whole {
		blockSize = wholeBlockSize
	}
	blocks := max(2, size/blockSize)
	req := unix.TpacketReq3{
		Block_size:     uint32(blockSize),
		Block_nr:       uint32(blocks),
		Frame_size:     frameSize,
		Frame_nr:       uint32(blocks * blockSize / frameSize),
		Retire_blk_tov: uint32(retire / time.Millisecond),
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("requesting a ring of %d blocks: %w", blocks, err)
	}
	mem, err := unix.Mmap(fd, 0, blocks*blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the ring: %w", err)
	}
	return &ring{mem: mem, blockSize: blockSize, blocks: blocks}, nil
}

func (r *ring) unmap() error {
	if err := unix.Munmap(r.mem); err != nil {
		return fmt.Errorf("unmapping the ring: %w", err)
	}
	return nil
}

func (r *ring) status(block int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[block*r.blockSize+blockStatus]))
}

// ready reports whether the kernel has handed the current block over.
func (r *ring) ready() bool {
	return atomic.LoadUint32(r.status(r.current))&unix.TP_STATUS_USER != 0
}

// filling reports whether the kernel holds packets in the current block
// that it has not handed over yet; the retire timer will hand them over.
func (r *ring) filling() bool {
	if atomic.LoadUint32(r.status(r.current))&unix.TP_STATUS_USER != 0 {
		return false
	}
	return atomic.LoadUint32(r.numPackets(r.current)) != 0
}

// numPackets points at the count of packets in a block, which the kernel
// zeroes when it starts filling the block and raises with each packet.
func (r *ring) numPackets(block int) *uint32 {
	off := unsafe.Offsetof(unix.TpacketBlockDesc{}.Hdr) + unsafe.Offsetof(unix.TpacketHdrV1{}.Num_pkts)
	return (*uint32)(unsafe.Pointer(&r.mem[block*r.blockSize+int(off)]))
}

// consume calls f for each packet of the current block, which must be
// ready, then gives the block back to the kernel and moves to the next.
func (r *ring) consume(f func(frame)) {
	base := r.current * r.blockSize
	block := r.mem[base : base+r.blockSize]
	hdr := (*unix.TpacketHdrV1)(unsafe.Pointer(&block[unsafe.Offsetof(unix.TpacketBlockDesc{}.Hdr)]))
	off := int(hdr.Offset_to_first_pkt)
	for range hdr.Num_pkts {
		if off+sllOffset+sllPacketType >= len(block) {
			break // a corrupt block; the kernel never writes one
		}
		p := (*unix.Tpacket3Hdr)(unsafe.Pointer(&block[off]))
		start := off + int(p.Mac)
		end := min(start+int(p.Snaplen), len(block))
		f(frame{
			time:     time.Unix(int64(p.Sec), int64(p.Nsec)),
			data:     block[start:end],
			length:   int(p.Len),
			outgoing: block[off+sllOffset+sllPacketType] == unix.PACKET_OUTGOING,
		})
		if p.Next_offset == 0 {
			break
		}
		off += int(p.Next_offset)
	}
	// A block given back keeps its count until the kernel starts filling
	// it again, which it may not do at once when the ring was full: zero
	// it, so that filling does not take the old packets for new ones.
	atomic.StoreUint32(r.numPackets(r.current), 0)
	atomic.StoreUint32(r.status(r.current), unix.TP_STATUS_KERNEL)
	r.current = (r.current + 1) % r.blocks
}
