// Package filter assembles the classic BPF program that a capture socket
// attaches, so that the kernel copies to userspace only the packets of the
// traced flow: its TCP or UDP ports and ends or its ICMP addresses, ICMP
// errors about it, ARP, the same flow inside IPIP and VXLAN, and optionally
// DNS. The
// program's return value is the number of bytes kept, so it also applies the
// snap length: headers only for the flow, whole packets for DNS.
package filter

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/gopacket/layers"
	"golang.org/x/net/bpf"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// Whole is the return value that keeps a packet whole: larger than any
// packet, the kernel caps it at the packet's length.
const Whole = 0x40000

// VXLANPort is the IANA UDP port of VXLAN, the one the filter looks into.
const VXLANPort = 4789

// dnsPort is the UDP port of DNS.
const dnsPort = 53

// Header offsets inside IPv4, UDP, VXLAN and Ethernet.
const (
	ipFlagsFrag  = 6
	ipProto      = 9
	ipSrc        = 12
	ipDst        = 16
	fragOffset   = 0x1fff
	udpHeaderLen = 8
	vxlanLen     = 8
	etherLen     = 14
	etherType    = 12
	// vxlanInnerIP is where the inner IPv4 header starts, counted from the
	// outer UDP header: UDP, VXLAN and the inner Ethernet header.
	vxlanInnerIP = udpHeaderLen + vxlanLen + etherLen
	// ipv4PlainWords and ipv4PlainLen are the length of an IPv4 header
	// without options, in 32-bit words (its IHL) and in bytes.
	ipv4PlainWords = 5
	ipv4PlainLen   = 4 * ipv4PlainWords
)

// Protocol numbers and ICMP types the program tests.
const (
	protoICMP        = 1
	protoIPIP        = 4
	protoUDP         = 17
	etherTypeIPv4    = 0x0800
	etherTypeARP     = 0x0806
	icmpUnreachable  = 3
	icmpTimeExceeded = 11
	icmpHeaderLen    = 8
)

// The scratch memory slots the program uses: the header offset saved
// around the DNS test, and the addresses of the IPv4 header whose
// transport header is being matched against the ends.
const (
	scratchHeaderBase = 0
	scratchSrc        = 1
	scratchDst        = 2
)

// Options says what the program keeps.
type Options struct {
	// Match selects the traced flow.
	Match trace.Match
	// DNS also keeps UDP packets from or to port 53, whole. A traced flow
	// that is itself DNS (UDP with port 53 among its ports or ends) is
	// kept whole without it: a DNS answer rarely fits in the headers'
	// snap length, least of all inside a tunnel.
	DNS bool
	// Snaplen is the number of bytes kept of a matching packet; zero keeps
	// packets whole.
	Snaplen uint32
}

// Build returns the program for an interface of the given link type:
// layers.LinkTypeEthernet, or layers.LinkTypeRaw for interfaces without a
// link-layer header (TUN devices, ipip tunnels).
func Build(link layers.LinkType, opts Options) ([]bpf.Instruction, error) {
	if err := validate(opts.Match); err != nil {
		return nil, err
	}
	opts.DNS = opts.DNS || isDNS(opts.Match)
	p := program{opts: opts, keep: opts.Snaplen}
	if p.keep == 0 {
		p.keep = Whole
	}
	var ip uint32 // offset of the outer IPv4 header
	switch link {
	case layers.LinkTypeEthernet:
		ip = etherLen
		p.linkEthernet()
	case layers.LinkTypeRaw:
		p.linkRaw()
	default:
		return nil, fmt.Errorf("building filter: unsupported link type %s", link)
	}
	p.outer(ip)
	return p.resolve()
}

// Assemble builds the program and assembles it for SO_ATTACH_FILTER.
func Assemble(link layers.LinkType, opts Options) ([]bpf.RawInstruction, error) {
	insns, err := Build(link, opts)
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(insns)
	if err != nil {
		return nil, fmt.Errorf("assembling filter: %w", err)
	}
	return raw, nil
}

func validate(m trace.Match) error {
	switch m.Proto {
	case trace.TCP, trace.UDP, trace.ICMP:
	default:
		return fmt.Errorf("building filter: unknown protocol %q", m.Proto)
	}
	for _, a := range m.Addrs {
		if !a.Unmap().Is4() {
			return fmt.Errorf("building filter: address %s is not IPv4", a)
		}
	}
	for _, e := range m.Ends {
		if !e.Addr().Unmap().Is4() {
			return fmt.Errorf("building filter: end %s is not IPv4", e)
		}
	}
	return nil
}

// label names an instruction position; it is resolved once the program is
// complete, so that branches can point forward.
type label int

// Special targets: the next instruction, and the two returns.
const (
	next label = -1 - iota
	accept
	acceptWhole
	reject
)

// branch is a conditional jump whose targets are labels.
type branch struct {
	cond     bpf.JumpTest
	val      uint32
	yes, no  label
	position int
}

// program is a BPF program under construction.
type program struct {
	opts    Options
	keep    uint32
	insns   []bpf.Instruction
	labels  []int // labels[l] is the position of label l, -1 until placed
	pending []branch
	// xZero says X is zero on every way to the next instruction, so that
	// loadAt can load at an absolute offset: the kernel reads those from
	// the packet directly, while each X-relative load calls a helper.
	xZero bool
}

func (p *program) emit(insns ...bpf.Instruction) {
	for _, insn := range insns {
		switch i := insn.(type) {
		case bpf.LoadConstant:
			if i.Dst == bpf.RegX {
				p.xZero = i.Val == 0
			}
		case bpf.LoadScratch:
			if i.Dst == bpf.RegX {
				p.xZero = false
			}
		case bpf.TAX, bpf.LoadMemShift:
			p.xZero = false
		}
	}
	p.insns = append(p.insns, insns...)
}

func (p *program) newLabel() label {
	p.labels = append(p.labels, -1)
	return label(len(p.labels) - 1)
}

// place puts label l at the next instruction, where ways join: what X
// holds there is no longer known.
func (p *program) place(l label) {
	p.labels[l] = len(p.insns)
	p.xZero = false
}

// jump tests A against val and goes to yes or no.
func (p *program) jump(cond bpf.JumpTest, val uint32, yes, no label) {
	p.pending = append(p.pending, branch{cond: cond, val: val, yes: yes, no: no, position: len(p.insns)})
	p.emit(nil) // filled in by resolve
}

// goTo jumps unconditionally.
func (p *program) goTo(l label) { p.jump(bpf.JumpEqual, 0, l, l) }

// loadAt loads size bytes at offset X+off into A.
func (p *program) loadAt(off uint32, size int) {
	if p.xZero {
		p.emit(bpf.LoadAbsolute{Off: off, Size: size})
		return
	}
	p.emit(bpf.LoadIndirect{Off: off, Size: size})
}

// advanceX adds the header length of the IPv4 header at X+off to X.
func (p *program) advanceX(off uint32) {
	p.loadAt(off, 1)
	p.emit(
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 2},
		bpf.ALUOpX{Op: bpf.ALUOpAdd},
		bpf.TAX{},
	)
}

// linkEthernet keeps ARP and passes IPv4 on.
func (p *program) linkEthernet() {
	p.emit(bpf.LoadAbsolute{Off: etherType, Size: 2})
	p.jump(bpf.JumpEqual, etherTypeARP, accept, next)
	p.jump(bpf.JumpEqual, etherTypeIPv4, next, reject)
}

// linkRaw passes IPv4 on; raw IP links carry no ARP.
func (p *program) linkRaw() {
	p.emit(
		bpf.LoadAbsolute{Off: 0, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
	)
	p.jump(bpf.JumpEqual, 0x40, next, reject)
}

// outer matches the IPv4 header at ip: the flow itself, or a tunnel
// carrying it.
func (p *program) outer(ip uint32) {
	tunnels := p.newLabel()
	p.emit(bpf.LoadConstant{Dst: bpf.RegX, Val: 0})
	p.flow(ip, tunnels)

	p.place(tunnels)
	ipip, udp := p.newLabel(), p.newLabel()
	p.emit(bpf.LoadConstant{Dst: bpf.RegX, Val: 0})
	p.loadAt(ip+ipFlagsFrag, 2)
	p.jump(bpf.JumpBitsSet, fragOffset, reject, next)
	p.loadAt(ip+ipProto, 1)
	p.jump(bpf.JumpEqual, protoIPIP, ipip, next)
	p.jump(bpf.JumpEqual, protoUDP, udp, reject)

	// IPIP: the inner header follows the outer one. Only the tests above,
	// with X zero, jump here and to udp.
	p.place(ipip)
	p.xZero = true
	p.advanceX(ip)
	p.flow(ip, reject)

	// VXLAN: UDP to port 4789 carrying an Ethernet frame with IPv4 in it.
	p.place(udp)
	p.xZero = true
	p.advanceX(ip)
	p.loadAt(ip+2, 2)
	p.jump(bpf.JumpEqual, VXLANPort, next, reject)
	p.loadAt(ip+udpHeaderLen+vxlanLen+etherType, 2)
	p.jump(bpf.JumpEqual, etherTypeIPv4, next, reject)
	p.flow(ip+vxlanInnerIP, reject)
}

// flow matches the IPv4 header at X+ip against the traced flow and DNS; it
// returns from the program on a match and goes to fail otherwise, with X
// clobbered.
func (p *program) flow(ip uint32, fail label) {
	if p.opts.DNS {
		zero := p.xZero
		p.emit(bpf.StoreScratch{Src: bpf.RegX, N: scratchHeaderBase})
		p.dns(ip)
		p.emit(bpf.LoadScratch{Dst: bpf.RegX, N: scratchHeaderBase})
		p.xZero = zero // X is back to what it was, on every way
	}
	m := p.opts.Match
	p.loadAt(ip+ipProto, 1)
	if m.Proto == trace.ICMP {
		p.jump(bpf.JumpEqual, protoICMP, next, fail)
		p.addresses(ip, fail)
		return
	}
	icmp := p.newLabel()
	p.jump(bpf.JumpEqual, uint32(m.Proto.Number()), next, icmp)
	p.loadAt(ip+ipFlagsFrag, 2)
	p.jump(bpf.JumpBitsSet, fragOffset, fail, next)
	p.transport(ip, fail)

	// An ICMP error quoting the flow's header: unreachable or TTL exceeded.
	p.place(icmp)
	quoted := p.newLabel()
	p.jump(bpf.JumpEqual, protoICMP, next, fail)
	p.advanceX(ip)
	p.loadAt(ip, 1)
	p.jump(bpf.JumpEqual, icmpUnreachable, quoted, next)
	p.jump(bpf.JumpEqual, icmpTimeExceeded, quoted, fail)
	p.place(quoted)
	p.loadAt(ip+icmpHeaderLen+ipProto, 1)
	p.jump(bpf.JumpEqual, uint32(m.Proto.Number()), next, fail)
	p.transport(ip+icmpHeaderLen, fail)
}

// transport matches the TCP or UDP header that follows the IPv4 header at
// X+ip: it accepts when either port is one of the traced ports, or its
// source or destination is one of the traced ends, and goes to fail
// otherwise, with X advanced to the transport header. With neither ports
// nor ends, every packet of the protocol is accepted.
func (p *program) transport(ip uint32, fail label) {
	m := p.opts.Match
	if len(m.Ports) == 0 && len(m.Ends) == 0 {
		p.goTo(accept)
		return
	}
	if len(m.Ends) > 0 {
		p.loadAt(ip+ipSrc, 4)
		p.emit(bpf.StoreScratch{Src: bpf.RegA, N: scratchSrc})
		p.loadAt(ip+ipDst, 4)
		p.emit(bpf.StoreScratch{Src: bpf.RegA, N: scratchDst})
	}
	if p.xZero {
		// The usual IPv4 header, without options: the transport header is
		// at a fixed offset, which absolute loads read directly.
		options := p.newLabel()
		p.loadAt(ip, 1)
		p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f})
		p.jump(bpf.JumpEqual, ipv4PlainWords, next, options)
		p.ports(ip + ipv4PlainLen)
		p.ends(ip + ipv4PlainLen)
		p.goTo(fail)
		p.place(options)
		p.xZero = true // only the test above jumps here, with X zero
	}
	p.advanceX(ip)
	p.ports(ip)
	p.ends(ip)
	p.goTo(fail)
}

// ports accepts when either port of the transport header at X+l4 is one of
// the traced ports; otherwise it falls through. The comparisons branch to
// a jump to accept placed right after them, so that none spans far.
func (p *program) ports(l4 uint32) {
	ports := p.opts.Match.Ports
	if len(ports) == 0 {
		return
	}
	zero := p.xZero // X does not change here: the labels below keep it
	hit, miss := p.newLabel(), p.newLabel()
	for _, side := range []uint32{0, 2} {
		p.loadAt(l4+side, 2)
		for _, port := range ports {
			p.jump(bpf.JumpEqual, uint32(port), hit, next)
		}
	}
	p.goTo(miss)
	p.place(hit)
	p.goTo(accept)
	p.place(miss)
	p.xZero = zero
}

// ends accepts when the source or the destination of the packet, its
// address (saved in scratch memory) and the port of the transport header
// at X+l4, is one of the traced ends; otherwise it falls through.
func (p *program) ends(l4 uint32) {
	zero := p.xZero // X does not change here: the labels below keep it
	for _, side := range []struct {
		addr uint32 // scratch slot
		port uint32 // offset in the transport header
	}{{scratchSrc, 0}, {scratchDst, 2}} {
		for _, e := range p.opts.Match.Ends {
			hit, miss := p.newLabel(), p.newLabel()
			p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: int(side.addr)})
			if e.Port() == 0 {
				p.jump(bpf.JumpEqual, addrValue(e.Addr()), hit, miss)
			} else {
				p.jump(bpf.JumpEqual, addrValue(e.Addr()), next, miss)
				p.loadAt(l4+side.port, 2)
				p.jump(bpf.JumpEqual, uint32(e.Port()), hit, miss)
			}
			p.place(hit)
			p.goTo(accept)
			p.place(miss)
			p.xZero = zero
		}
	}
}

// addresses accepts when the source or destination of the IPv4 header at
// X+ip is one of the traced addresses; no addresses accept every packet.
func (p *program) addresses(ip uint32, fail label) {
	addrs := p.opts.Match.Addrs
	if len(addrs) == 0 {
		p.goTo(accept)
		return
	}
	for _, field := range []uint32{ipSrc, ipDst} {
		p.loadAt(ip+field, 4)
		for _, a := range addrs {
			p.jump(bpf.JumpEqual, addrValue(a), accept, next)
		}
	}
	p.goTo(fail)
}

// dns keeps UDP from or to port 53 whole; otherwise it falls through.
func (p *program) dns(ip uint32) {
	notDNS := p.newLabel()
	p.loadAt(ip+ipProto, 1)
	p.jump(bpf.JumpEqual, protoUDP, next, notDNS)
	p.loadAt(ip+ipFlagsFrag, 2)
	p.jump(bpf.JumpBitsSet, fragOffset, notDNS, next)
	p.advanceX(ip)
	p.loadAt(ip, 2)
	p.jump(bpf.JumpEqual, dnsPort, acceptWhole, next)
	p.loadAt(ip+2, 2)
	p.jump(bpf.JumpEqual, dnsPort, acceptWhole, notDNS)
	p.place(notDNS)
}

// isDNS reports whether the flow m selects is DNS: UDP from or to port 53.
func isDNS(m trace.Match) bool {
	if m.Proto != trace.UDP {
		return false
	}
	if slices.Contains(m.Ports, dnsPort) {
		return true
	}
	return slices.ContainsFunc(m.Ends, func(e netip.AddrPort) bool { return e.Port() == dnsPort })
}

func addrValue(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// maxInstructions is the longest program the kernel attaches (BPF_MAXINSNS).
const maxInstructions = 4096

// errTooLong is returned for a program the kernel would refuse.
var errTooLong = fmt.Errorf("program longer than the kernel's %d instructions: too many ports or addresses", maxInstructions)

// maxSkip is the farthest a conditional jump reaches.
const maxSkip = 255

// resolve appends the returns and turns labelled branches into relative
// jumps. A conditional jump reaches 255 instructions at most: one whose
// target lies farther is given a trampoline, an unconditional jump placed
// right after it, which reaches anywhere.
func (p *program) resolve() ([]bpf.Instruction, error) {
	returns := map[label]label{}
	for _, r := range []struct {
		l   label
		val uint32
	}{{accept, p.keep}, {acceptWhole, Whole}, {reject, 0}} {
		returns[r.l] = p.newLabel()
		p.place(returns[r.l])
		p.emit(bpf.RetConstant{Val: r.val})
	}
	// Every target becomes a placed label, so that trampolines can be
	// inserted: the next instruction moves along with them.
	for i := range p.pending {
		b := &p.pending[i]
		for _, target := range []*label{&b.yes, &b.no} {
			switch {
			case *target == next:
				*target = p.newLabel()
				p.labels[*target] = b.position + 1
			case *target < 0:
				*target = returns[*target]
			}
		}
	}
	for moved := true; moved; {
		moved = false
		for i := range p.pending {
			if b := p.pending[i]; b.yes != b.no && p.skip(b, b.yes) > maxSkip {
				p.pending[i].yes, moved = p.trampoline(b.position+1, b.yes), true
			}
			if b := p.pending[i]; b.yes != b.no && p.skip(b, b.no) > maxSkip {
				p.pending[i].no, moved = p.trampoline(b.position+1, b.no), true
			}
		}
	}
	if len(p.insns) > maxInstructions {
		return nil, fmt.Errorf("building filter: %w", errTooLong)
	}
	for _, b := range p.pending {
		yes, no := p.skip(b, b.yes), p.skip(b, b.no)
		if b.yes == b.no {
			p.insns[b.position] = bpf.Jump{Skip: uint32(yes)}
			continue
		}
		p.insns[b.position] = bpf.JumpIf{Cond: b.cond, Val: b.val, SkipTrue: uint8(yes), SkipFalse: uint8(no)}
	}
	return p.insns, nil
}

// skip is the distance from the instruction after branch b to label l.
func (p *program) skip(b branch, l label) int { return p.labels[l] - b.position - 1 }

// trampoline inserts an unconditional jump to l at position at, moving
// what follows, and returns the label of the jump.
func (p *program) trampoline(at int, l label) label {
	p.insns = slices.Insert(p.insns, at, bpf.Instruction(nil))
	for i, pos := range p.labels {
		if pos >= at {
			p.labels[i] = pos + 1
		}
	}
	for i := range p.pending {
		if p.pending[i].position >= at {
			p.pending[i].position++
		}
	}
	p.pending = append(p.pending, branch{yes: l, no: l, position: at})
	jump := p.newLabel()
	p.labels[jump] = at
	return jump
}
