// Package pcapng reads and writes the pcapng capture format
// (draft-ietf-opsawg-pcapng): one Section Header Block, an Interface
// Description Block per captured interface, named "node/interface", and an
// Enhanced Packet Block per packet, carrying the packet's original length,
// its direction and a comment with the hop annotation. Merge joins the files
// of several nodes into one, ordered by time. gopacket's pcapgo writer has no
// per-packet comments, hence this package.
package pcapng

import (
	"math"
	"time"

	"github.com/google/gopacket/layers"
)

// Block types and Section Header Block fields.
const (
	blockSectionHeader    = 0x0A0D0D0A
	blockInterface        = 0x00000001
	blockSimplePacket     = 0x00000003
	blockEnhancedPacket   = 0x00000006
	byteOrderMagic        = 0x1A2B3C4D
	versionMajor          = 1
	versionMinor          = 0
	unknownSectionLength  = math.MaxUint64 // -1: not given
	nanosecondResolution  = 9
	defaultTimeResolution = 6
)

// Option codes.
const (
	optEndOfOpt      = 0
	optComment       = 1
	optUserAppl      = 4 // in a Section Header Block
	optIfName        = 2 // in an Interface Description Block
	optIfDesc        = 3
	optIfTsResol     = 9
	optIfTsOffset    = 14
	optEPBFlags      = 2 // in an Enhanced Packet Block
	epbFlagsInbound  = 1
	epbFlagsOutbound = 2
	epbFlagsDirMask  = 3
)

// maxBlockLength bounds the blocks a Reader accepts, so that a corrupt
// length cannot make it allocate without limit.
const maxBlockLength = 16 << 20

// Interface is a captured interface.
type Interface struct {
	// Name is "node/interface", such as "k8s-w1/cali1a2b3c4d5e6".
	Name string
	// Description is free text, such as the network namespace.
	Description string
	// LinkType is layers.LinkTypeEthernet or layers.LinkTypeRaw here, but
	// any pcap link type is written and read as it is.
	LinkType layers.LinkType
	// Snaplen is the most bytes kept of a packet; zero means no limit.
	Snaplen uint32
}

// Direction is the way a packet crossed its interface.
type Direction uint8

// The directions an Enhanced Packet Block records.
const (
	DirectionUnknown Direction = iota
	Inbound
	Outbound
)

// Packet is a captured packet.
type Packet struct {
	// Interface is the index of the packet's interface: the value
	// Writer.AddInterface returned, or the index into Reader.Interfaces.
	Interface int
	Time      time.Time
	// Data is the captured bytes, starting at the link-layer header.
	Data []byte
	// Length is the packet's length on the wire; it is len(Data) when zero
	// or smaller.
	Length    int
	Direction Direction
	// Comment is the hop annotation.
	Comment string
}
