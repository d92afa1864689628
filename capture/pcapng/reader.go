package pcapng

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"
	"time"

	"github.com/google/gopacket/layers"
)

// ErrFormat is wrapped by the errors of malformed input.
var ErrFormat = errors.New("malformed pcapng")

// Reader reads the packets of a pcapng file, section after section. The
// interfaces of all sections are numbered in one sequence.
type Reader struct {
	r     *bufio.Reader
	order binary.ByteOrder
	// interfaces holds every interface read so far; section is the index
	// of the current section's first one.
	interfaces []readInterface
	section    int
}

// readInterface is an interface and how to read its timestamps.
type readInterface struct {
	Interface
	toTime func(ts uint64) time.Time
}

// NewReader reads the first Section Header Block of r.
func NewReader(r io.Reader) (*Reader, error) {
	pr := &Reader{r: bufio.NewReader(r)}
	typ, body, err := pr.readBlock()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: empty input", ErrFormat)
	}
	if err != nil {
		return nil, err
	}
	if typ != blockSectionHeader {
		return nil, fmt.Errorf("%w: first block has type %#x, not a section header", ErrFormat, typ)
	}
	return pr, pr.sectionHeader(body)
}

// Interfaces returns the interfaces read so far; every interface a packet
// refers to has been read before the packet.
func (r *Reader) Interfaces() []Interface {
	out := make([]Interface, len(r.interfaces))
	for i, ri := range r.interfaces {
		out[i] = ri.Interface
	}
	return out
}

// Next returns the next packet, or io.EOF after the last.
func (r *Reader) Next() (Packet, error) {
	for {
		typ, body, err := r.readBlock()
		if err != nil {
			return Packet{}, err
		}
		switch typ {
		case blockSectionHeader:
			if err := r.sectionHeader(body); err != nil {
				return Packet{}, err
			}
		case blockInterface:
			if err := r.interfaceDescription(body); err != nil {
				return Packet{}, err
			}
		case blockEnhancedPacket:
			return r.enhancedPacket(body)
		case blockSimplePacket:
			return r.simplePacket(body)
		}
		// Other blocks (statistics, name resolution, custom) are skipped.
	}
}

// readBlock reads one block and returns its type and body. The section
// header's byte-order magic decides the byte order of its section.
func (r *Reader) readBlock() (uint32, []byte, error) {
	var head [12]byte
	if _, err := io.ReadFull(r.r, head[:8]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, fmt.Errorf("%w: truncated block header", ErrFormat)
		}
		return 0, nil, err // io.EOF between blocks is the end of the file
	}
	if binary.LittleEndian.Uint32(head[0:]) == blockSectionHeader {
		if _, err := io.ReadFull(r.r, head[8:12]); err != nil {
			return 0, nil, fmt.Errorf("%w: truncated section header", ErrFormat)
		}
		switch magic := head[8:12]; {
		case binary.LittleEndian.Uint32(magic) == byteOrderMagic:
			r.order = binary.LittleEndian
		case binary.BigEndian.Uint32(magic) == byteOrderMagic:
			r.order = binary.BigEndian
		default:
			return 0, nil, fmt.Errorf("%w: bad byte-order magic %x", ErrFormat, magic)
		}
	} else if r.order == nil {
		return 0, nil, fmt.Errorf("%w: no section header", ErrFormat)
	}
	typ, total := r.order.Uint32(head[0:]), r.order.Uint32(head[4:])
	read := 8
	if typ == blockSectionHeader {
		read = 12
	}
	if total < 12 || total%4 != 0 || total > maxBlockLength || int(total) < read+4 {
		return 0, nil, fmt.Errorf("%w: block length %d", ErrFormat, total)
	}
	block := make([]byte, total)
	copy(block, head[:read])
	if _, err := io.ReadFull(r.r, block[read:]); err != nil {
		return 0, nil, fmt.Errorf("%w: truncated block of type %#x", ErrFormat, typ)
	}
	if trailer := r.order.Uint32(block[total-4:]); trailer != total {
		return 0, nil, fmt.Errorf("%w: block length %d, trailer says %d", ErrFormat, total, trailer)
	}
	return typ, block[8 : total-4], nil
}

func (r *Reader) sectionHeader(body []byte) error {
	if len(body) < 16 {
		return fmt.Errorf("%w: short section header", ErrFormat)
	}
	if major := r.order.Uint16(body[4:]); major != versionMajor {
		return fmt.Errorf("%w: version %d", ErrFormat, major)
	}
	r.section = len(r.interfaces)
	return nil
}

func (r *Reader) interfaceDescription(body []byte) error {
	if len(body) < 8 {
		return fmt.Errorf("%w: short interface description", ErrFormat)
	}
	i := readInterface{Interface: Interface{
		LinkType: layers.LinkType(r.order.Uint16(body[0:])),
		Snaplen:  r.order.Uint32(body[4:]),
	}}
	resolution, offset := byte(defaultTimeResolution), int64(0)
	err := r.options(body[8:], func(code uint16, value []byte) error {
		switch code {
		case optIfName:
			i.Name = string(value)
		case optIfDesc:
			i.Description = string(value)
		case optIfTsResol:
			if len(value) != 1 {
				return fmt.Errorf("%w: if_tsresol of %d bytes", ErrFormat, len(value))
			}
			resolution = value[0]
		case optIfTsOffset:
			if len(value) != 8 {
				return fmt.Errorf("%w: if_tsoffset of %d bytes", ErrFormat, len(value))
			}
			offset = int64(r.order.Uint64(value))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if i.toTime, err = timeConverter(resolution, offset); err != nil {
		return err
	}
	r.interfaces = append(r.interfaces, i)
	return nil
}

// timeConverter returns the function that turns a timestamp of the given
// if_tsresol and if_tsoffset into a time.
func timeConverter(resolution byte, offset int64) (func(uint64) time.Time, error) {
	if resolution&0x80 != 0 { // a negative power of two
		shift := uint(resolution & 0x7f)
		if shift >= 64 {
			return nil, fmt.Errorf("%w: if_tsresol 2^-%d", ErrFormat, shift)
		}
		return func(ts uint64) time.Time {
			sec, frac := ts>>shift, ts&(1<<shift-1)
			hi, lo := bits.Mul64(frac, uint64(time.Second))
			nsec := lo >> shift
			if shift > 0 {
				nsec |= hi << (64 - shift)
			}
			return time.Unix(int64(sec)+offset, int64(nsec))
		}, nil
	}
	if resolution > 19 {
		return nil, fmt.Errorf("%w: if_tsresol 10^-%d", ErrFormat, resolution)
	}
	perSecond := uint64(1)
	for range resolution {
		perSecond *= 10
	}
	return func(ts uint64) time.Time {
		sec, frac := ts/perSecond, ts%perSecond
		var nsec uint64
		if perSecond <= uint64(time.Second) {
			nsec = frac * (uint64(time.Second) / perSecond)
		} else {
			nsec = frac / (perSecond / uint64(time.Second))
		}
		return time.Unix(int64(sec)+offset, int64(nsec))
	}, nil
}

func (r *Reader) enhancedPacket(body []byte) (Packet, error) {
	if len(body) < 20 {
		return Packet{}, fmt.Errorf("%w: short enhanced packet", ErrFormat)
	}
	id := int(r.order.Uint32(body[0:]))
	if id >= len(r.interfaces)-r.section {
		return Packet{}, fmt.Errorf("%w: packet on undescribed interface %d", ErrFormat, id)
	}
	iface := r.interfaces[r.section+id]
	ts := uint64(r.order.Uint32(body[4:]))<<32 | uint64(r.order.Uint32(body[8:]))
	captured := int(r.order.Uint32(body[12:]))
	if captured > len(body)-20 {
		return Packet{}, fmt.Errorf("%w: captured length %d exceeds its block", ErrFormat, captured)
	}
	p := Packet{
		Interface: r.section + id,
		Time:      iface.toTime(ts),
		Data:      body[20 : 20+captured],
		Length:    int(r.order.Uint32(body[16:])),
	}
	var comments []string
	end := min(len(body), 20+captured+padding(captured))
	err := r.options(body[end:], func(code uint16, value []byte) error {
		switch code {
		case optComment:
			comments = append(comments, string(value))
		case optEPBFlags:
			if len(value) != 4 {
				return fmt.Errorf("%w: epb_flags of %d bytes", ErrFormat, len(value))
			}
			switch r.order.Uint32(value) & epbFlagsDirMask {
			case epbFlagsInbound:
				p.Direction = Inbound
			case epbFlagsOutbound:
				p.Direction = Outbound
			}
		}
		return nil
	})
	p.Comment = strings.Join(comments, "\n")
	return p, err
}

func (r *Reader) simplePacket(body []byte) (Packet, error) {
	if len(body) < 4 {
		return Packet{}, fmt.Errorf("%w: short simple packet", ErrFormat)
	}
	if r.section >= len(r.interfaces) {
		return Packet{}, fmt.Errorf("%w: simple packet before any interface", ErrFormat)
	}
	length := int(r.order.Uint32(body[0:]))
	data := body[4:]
	if snap := int(r.interfaces[r.section].Snaplen); snap > 0 && len(data) > snap {
		data = data[:snap]
	}
	return Packet{Interface: r.section, Data: data[:min(len(data), length)], Length: length}, nil
}

// options calls f for each option in b, up to opt_endofopt or the end.
func (r *Reader) options(b []byte, f func(code uint16, value []byte) error) error {
	for len(b) >= 4 {
		code, length := r.order.Uint16(b[0:]), int(r.order.Uint16(b[2:]))
		if code == optEndOfOpt {
			return nil
		}
		b = b[4:]
		if length > len(b) {
			return fmt.Errorf("%w: option %d of %d bytes overruns its block", ErrFormat, code, length)
		}
		if err := f(code, b[:length]); err != nil {
			return err
		}
		b = b[min(len(b), length+padding(length)):]
	}
	return nil
}
