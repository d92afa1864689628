package pcapng

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// application names the writer in the Section Header Block.
const application = "kubectl-nettrace"

// Writer writes one pcapng section, in little-endian byte order, with
// nanosecond timestamps.
type Writer struct {
	w          *bufio.Writer
	interfaces int
	body       []byte // reused for each block
}

// NewWriter writes the Section Header Block to w and returns a Writer for
// the section's interfaces and packets.
func NewWriter(w io.Writer) (*Writer, error) {
	pw := &Writer{w: bufio.NewWriter(w)}
	b := binary.LittleEndian.AppendUint32(nil, byteOrderMagic)
	b = binary.LittleEndian.AppendUint16(b, versionMajor)
	b = binary.LittleEndian.AppendUint16(b, versionMinor)
	b = binary.LittleEndian.AppendUint64(b, unknownSectionLength)
	b = appendOption(b, optUserAppl, []byte(application))
	b = appendEndOfOptions(b)
	if err := pw.writeBlock(blockSectionHeader, b); err != nil {
		return nil, fmt.Errorf("writing section header: %w", err)
	}
	return pw, nil
}

// AddInterface writes an Interface Description Block and returns the index
// that packets on the interface carry.
func (w *Writer) AddInterface(i Interface) (int, error) {
	b := binary.LittleEndian.AppendUint16(w.body[:0], uint16(i.LinkType))
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, i.Snaplen)
	if i.Name != "" {
		b = appendOption(b, optIfName, []byte(i.Name))
	}
	if i.Description != "" {
		b = appendOption(b, optIfDesc, []byte(i.Description))
	}
	b = appendOption(b, optIfTsResol, []byte{nanosecondResolution})
	b = appendEndOfOptions(b)
	w.body = b
	if err := w.writeBlock(blockInterface, b); err != nil {
		return 0, fmt.Errorf("writing interface %s: %w", i.Name, err)
	}
	w.interfaces++
	return w.interfaces - 1, nil
}

// WritePacket writes an Enhanced Packet Block.
func (w *Writer) WritePacket(p Packet) error {
	if p.Interface < 0 || p.Interface >= w.interfaces {
		return fmt.Errorf("writing packet: interface %d not added (have %d)", p.Interface, w.interfaces)
	}
	if len(p.Data) > maxBlockLength/2 {
		return fmt.Errorf("writing packet: %d bytes is more than a block holds", len(p.Data))
	}
	length := max(p.Length, len(p.Data))
	if length > math.MaxUint32 {
		return fmt.Errorf("writing packet: length %d does not fit", length)
	}
	ts := uint64(p.Time.UnixNano())
	b := binary.LittleEndian.AppendUint32(w.body[:0], uint32(p.Interface))
	b = binary.LittleEndian.AppendUint32(b, uint32(ts>>32))
	b = binary.LittleEndian.AppendUint32(b, uint32(ts))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Data)))
	b = binary.LittleEndian.AppendUint32(b, uint32(length))
	b = appendPadded(b, p.Data)
	hasOptions := p.Comment != "" || p.Direction != DirectionUnknown
	if p.Comment != "" {
		b = appendOption(b, optComment, []byte(p.Comment))
	}
	switch p.Direction {
	case Inbound:
		b = appendOption(b, optEPBFlags, binary.LittleEndian.AppendUint32(nil, epbFlagsInbound))
	case Outbound:
		b = appendOption(b, optEPBFlags, binary.LittleEndian.AppendUint32(nil, epbFlagsOutbound))
	}
	if hasOptions {
		b = appendEndOfOptions(b)
	}
	w.body = b
	if err := w.writeBlock(blockEnhancedPacket, b); err != nil {
		return fmt.Errorf("writing packet: %w", err)
	}
	return nil
}

// Flush writes buffered blocks to the underlying writer.
func (w *Writer) Flush() error {
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("flushing pcapng: %w", err)
	}
	return nil
}

// writeBlock writes type, total length, body (already padded to 32 bits)
// and the total length again.
func (w *Writer) writeBlock(typ uint32, body []byte) error {
	total := uint32(12 + len(body))
	var head [8]byte
	binary.LittleEndian.PutUint32(head[0:], typ)
	binary.LittleEndian.PutUint32(head[4:], total)
	w.w.Write(head[:])
	w.w.Write(body)
	_, err := w.w.Write(head[4:8])
	return err
}

// appendOption appends an option whose value is padded to 32 bits. Values
// longer than an option holds are cut.
func appendOption(b []byte, code uint16, value []byte) []byte {
	if len(value) > math.MaxUint16 {
		value = value[:math.MaxUint16]
	}
	b = binary.LittleEndian.AppendUint16(b, code)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(value)))
	return appendPadded(b, value)
}

func appendEndOfOptions(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, optEndOfOpt)
}

func appendPadded(b, data []byte) []byte {
	var zeros [3]byte
	b = append(b, data...)
	return append(b, zeros[:padding(len(data))]...)
}

// padding is the number of bytes that pad n to 32 bits.
func padding(n int) int { return (4 - n%4) % 4 }
