package netfilter

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/nflogtrace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/nfttrace"
	"github.com/kubectl-nettrace/nettrace/trace/netfilter/ruleset"
)

// onLegacyEvent turns a TRACE event into a hop: the rule is looked up in
// iptables-legacy-save by table, chain and number.
func (t *Tracer) onLegacyEvent(ev nflogtrace.Event) {
	if !matches(*t.match.Load(), ev.Packet) || strings.HasPrefix(ev.Chain, legacyChainPrefix) {
		return
	}
	rule := &trace.Rule{
		Backend:  string(Legacy),
		Family:   "ip",
		Table:    ev.Table,
		Chain:    ev.Chain,
		Type:     ev.Type,
		InIface:  t.links.name(ev.InIndex),
		OutIface: t.links.name(ev.OutIndex),
		Mark:     ev.Mark,
	}
	note := ""
	if hit, ok := t.rules.Legacy(ev.Table, ev.Chain, ev.Type, ev.Number); ok {
		if strings.HasPrefix(ruleset.Comment(hit.Text), tagPrefix) {
			return // a tracer's own jump rule, met by a packet already traced
		}
		rule.Type, rule.Text, rule.Verdict = hit.Type, hit.Text, hit.Verdict
	} else {
		note = fmt.Sprintf("rule %d of %s %s is not in iptables-legacy-save", ev.Number, ev.Table, ev.Chain)
	}
	if rule.Type == "rule" {
		rule.Number = ev.Number
	}
	t.emitRule(SourceNflog, ev.Packet, rule, note)
}

// onNftEvent turns an nf_tables trace event into a hop. Only the first event
// of a packet's walk of a base chain carries its headers and devices; the
// others take them from the cache, by trace id. The end of a base chain is
// left out: its policy event follows.
func (t *Tracer) onNftEvent(ev nfttrace.Event) {
	// Remember the headers before skipping anything: the events that follow
	// in the same base chain do not repeat them.
	seen := t.packets.remember(ev)
	if strings.HasPrefix(ev.Table, nftTablePrefix) {
		return
	}
	// A rule or return without a handle is the end of a chain: the kernel
	// reports a regular chain's implicit return as a rule with verdict
	// continue.
	endOfChain := ev.Handle == 0 && ev.Type != "policy"
	if endOfChain && t.rules.NftBaseChain(ev.Family, ev.Table, ev.Chain) {
		return // the policy event follows
	}
	if seen.packet == nil || !matches(*t.match.Load(), seen.packet) {
		return
	}
	pkt := *seen.packet
	pkt.Mark = ev.Mark
	rule := &trace.Rule{
		Backend:  string(Nft),
		Family:   ev.Family,
		Table:    ev.Table,
		Chain:    ev.Chain,
		Handle:   ev.Handle,
		Type:     ev.Type,
		Verdict:  ev.Verdict,
		InIface:  t.links.name(seen.in),
		OutIface: t.links.name(seen.out),
		Mark:     ev.Mark,
	}
	note := fmt.Sprintf("nft trace id %08x", ev.ID)
	switch {
	case endOfChain:
		// Said as the legacy backend says it.
		rule.Type, rule.Verdict = "return", "return"
	case ev.Type == "policy" && ruleset.IptablesNft(ev.Family, ev.Table):
		rule.Text = ":" + ev.Chain + " " + strings.ToUpper(ev.Verdict)
	case ev.Type == "policy":
		rule.Text = "policy " + ev.Verdict
	default:
		// A rule with a handle, even one whose verdict returns.
		rule.Type = "rule"
		if hit, ok := t.rules.Nft(ev.Family, ev.Table, ev.Chain, ev.Handle); ok {
			rule.Number, rule.Text = hit.Number, hit.Text
		} else {
			note += fmt.Sprintf("; handle %d of %s %s %s is not in the ruleset", ev.Handle, ev.Family, ev.Table, ev.Chain)
		}
	}
	t.emitRule(SourceNftrace, &pkt, rule, note)
}

func (t *Tracer) emitRule(source string, pkt *trace.Packet, rule *trace.Rule, note string) {
	iface := rule.InIface
	if iface == "" {
		iface = rule.OutIface
	}
	t.emit(trace.Hop{
		Time:   time.Now(),
		Node:   t.opts.Node,
		Netns:  t.opts.Netns,
		Kind:   trace.HopRule,
		Iface:  iface,
		Source: source,
		Packet: pkt,
		Rule:   rule,
		Note:   note,
	})
}

// matches reports whether a packet belongs to the traced flow.
func matches(m trace.Match, p *trace.Packet) bool {
	return p.Proto == m.Proto && m.Covers(netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
}

// traceCacheSize bounds the trace ids remembered.
const traceCacheSize = 4096

// traceCache remembers the headers and devices of the packets that nf_tables
// trace events name by id. Only the nftrace reader's goroutine uses it.
type traceCache struct {
	seen map[uint32]seenPacket
}

type seenPacket struct {
	packet  *trace.Packet
	in, out uint32
}

// remember records what ev carries and returns what is known of its packet.
func (c *traceCache) remember(ev nfttrace.Event) seenPacket {
	if ev.Packet == nil {
		return c.seen[ev.ID]
	}
	if c.seen == nil || len(c.seen) >= traceCacheSize {
		c.seen = make(map[uint32]seenPacket)
	}
	s := seenPacket{packet: ev.Packet, in: ev.InIndex, out: ev.OutIndex}
	c.seen[ev.ID] = s
	return s
}

// linkNames names the interfaces of the traced namespace by ifindex.
type linkNames struct {
	handle *netlink.Handle
	mu     sync.Mutex
	names  map[uint32]string
}

func newLinkNames(h *netnsHandle) (*linkNames, error) {
	handle, err := netlink.NewHandleAt(netns.NsHandle(h.fd()))
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink in the traced namespace: %w", err)
	}
	return &linkNames{handle: handle, names: map[uint32]string{}}, nil
}

// name returns the name of the interface with index i, "" for index 0, and
// "if<i>" for an interface that is gone.
func (l *linkNames) name(i uint32) string {
	if i == 0 {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.names[i]; ok {
		return n
	}
	n := fmt.Sprintf("if%d", i)
	if link, err := l.handle.LinkByIndex(int(i)); err == nil {
		n = link.Attrs().Name
	}
	l.names[i] = n
	return n
}

func (l *linkNames) close() { l.handle.Close() }
