package nfttrace

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// capturedEvents reads testdata/trace-events.hex: real trace messages, by
// line number.
func capturedEvents(t testing.TB) map[int][]byte {
	t.Helper()
	f, err := os.Open("testdata/trace-events.hex")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	events := map[int][]byte{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		b, err := hex.DecodeString(sc.Text())
		if err != nil {
			t.Fatalf("line %d: %v", line, err)
		}
		events[line] = b
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return events
}

func TestDecodeCapturedEvents(t *testing.T) {
	events := capturedEvents(t)
	if len(events) < 90 {
		t.Fatalf("%d captured events, want the whole file", len(events))
	}
	for line, b := range events {
		if _, err := DecodePayload(b); err != nil {
			t.Errorf("line %d: %v", line, err)
		}
	}
	client, vip, server := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.96.0.100"), netip.MustParseAddr("10.2.0.3")
	for _, tc := range []struct {
		line int
		want Event
	}{
		{6, Event{ID: 0x12294570, Family: "ip", Table: "raw", Chain: "PREROUTING", Type: "rule", Verdict: "continue", InIndex: 2,
			Packet: &trace.Packet{Proto: trace.TCP, Src: client, SrcPort: 40339, Dst: vip, DstPort: 80, Length: 60, TTL: 64, TCPFlags: "S"}}},
		{9, Event{ID: 0x12294570, Family: "ip", Table: "nat", Chain: "KUBE-SERVICES", Handle: 22, Type: "rule", Verdict: "jump KUBE-SVC-XXXX"}},
		{11, Event{ID: 0x12294570, Family: "ip", Table: "nat", Chain: "KUBE-MARK-MASQ", Handle: 14, Type: "rule", Verdict: "continue", Mark: 0x4000}},
		// The implicit end of a regular chain: no handle, verdict continue.
		{12, Event{ID: 0x12294570, Family: "ip", Table: "nat", Chain: "KUBE-MARK-MASQ", Type: "rule", Verdict: "continue", Mark: 0x4000}},
		{15, Event{ID: 0x12294570, Family: "ip", Table: "filter", Chain: "FORWARD", Handle: 5, Type: "rule", Verdict: "jump KUBE-FORWARD", InIndex: 2, OutIndex: 3, Mark: 0x4000,
			Packet: &trace.Packet{Proto: trace.TCP, Src: client, SrcPort: 40339, Dst: server, DstPort: 8080, Length: 60, TTL: 63, TCPFlags: "S", Mark: 0x4000}}},
		{60, Event{ID: 0xd4b7bf81, Family: "ip", Table: "filter", Chain: "FORWARD", Handle: 6, Type: "rule", Verdict: "drop"}},
		{64, Event{ID: 0xc365d8d2, Family: "ip", Table: "raw", Chain: "PREROUTING", Type: "rule", Verdict: "continue", InIndex: 2,
			Packet: &trace.Packet{Proto: trace.ICMP, Src: client, Dst: netip.MustParseAddr("10.2.0.2"), Length: 84, TTL: 64, ICMPType: 8, ICMPID: 30422, ICMPSeq: 1}}},
		{98, Event{ID: 0xcf2277e0, Family: "inet", Table: "fw", Chain: "input_filter", Type: "policy", Verdict: "drop"}},
	} {
		got, err := DecodePayload(events[tc.line])
		if err != nil {
			t.Errorf("line %d: %v", tc.line, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("line %d:\n got %+v %+v\nwant %+v %+v", tc.line, got, got.Packet, tc.want, tc.want.Packet)
		}
	}
}

func TestDecodeChecksMessageType(t *testing.T) {
	events := capturedEvents(t)
	m := netlink.Message{Header: netlink.Header{Type: MessageType}, Data: events[6]}
	if _, err := Decode(m); err != nil {
		t.Errorf("Decode of a trace message: %v", err)
	}
	m.Header.Type = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE)
	if _, err := Decode(m); err != ErrNotTrace {
		t.Errorf("Decode of a NEWRULE message = %v, want ErrNotTrace", err)
	}
}

// encode builds a trace message body from attributes, for the cases the
// capture does not hold.
func encode(t *testing.T, family uint8, build func(ae *netlink.AttributeEncoder)) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	build(ae)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{family, 0, 0, 0}, b...)
}

func TestDecodeVerdicts(t *testing.T) {
	for _, tc := range []struct {
		code  int32
		chain string
		want  string
	}{
		{unix.NFT_GOTO, "svc", "goto svc"},
		{unix.NFT_RETURN, "", "return"},
		{unix.NFT_BREAK, "", "break"},
		{nfStolen, "", "stolen"},
		{nfQueue | 7<<16, "", "queue"},
		{42, "", "verdict 42"},
	} {
		b := encode(t, unix.NFPROTO_BRIDGE, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TRACE_TABLE, "t")
			ae.String(unix.NFTA_TRACE_CHAIN, "c")
			ae.Uint32(unix.NFTA_TRACE_TYPE, unix.NFT_TRACETYPE_RULE)
			ae.Nested(unix.NFTA_TRACE_VERDICT, func(nae *netlink.AttributeEncoder) error {
				nae.ByteOrder = binary.BigEndian
				nae.Uint32(unix.NFTA_VERDICT_CODE, uint32(tc.code))
				if tc.chain != "" {
					nae.String(unix.NFTA_VERDICT_CHAIN, tc.chain)
				}
				return nil
			})
		})
		ev, err := DecodePayload(b)
		if err != nil || ev.Verdict != tc.want || ev.Family != "bridge" {
			t.Errorf("code %d: %+v, %v; want verdict %q in family bridge", tc.code, ev, err, tc.want)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"short": {2, 0},
		"no type": encode(t, 2, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TRACE_TABLE, "t")
			ae.String(unix.NFTA_TRACE_CHAIN, "c")
		}),
		"bad type": encode(t, 2, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TRACE_TABLE, "t")
			ae.String(unix.NFTA_TRACE_CHAIN, "c")
			ae.Uint32(unix.NFTA_TRACE_TYPE, 9)
		}),
		"no chain": encode(t, 2, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TRACE_TABLE, "t")
			ae.Uint32(unix.NFTA_TRACE_TYPE, unix.NFT_TRACETYPE_RULE)
		}),
		"truncated": {2, 0, 0, 0, 8, 0, 1},
		"no code": encode(t, 2, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TRACE_TABLE, "t")
			ae.String(unix.NFTA_TRACE_CHAIN, "c")
			ae.Uint32(unix.NFTA_TRACE_TYPE, unix.NFT_TRACETYPE_RULE)
			ae.Nested(unix.NFTA_TRACE_VERDICT, func(nae *netlink.AttributeEncoder) error { nae.String(unix.NFTA_VERDICT_CHAIN, "x"); return nil })
		}),
	} {
		if ev, err := DecodePayload(b); err == nil {
			t.Errorf("%s: decoded %+v", name, ev)
		}
	}
}

// FuzzDecodePayload feeds the decoder mutations of real trace messages.
func FuzzDecodePayload(f *testing.F) {
	for _, b := range capturedEvents(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodePayload(b)
		if err != nil {
			return
		}
		if ev.Table == "" || ev.Chain == "" || ev.Type == "" {
			t.Errorf("decoded an event without table, chain or type: %+v", ev)
		}
		if ev.Packet != nil && !ev.Packet.Src.Is4() {
			t.Errorf("decoded a packet without an IPv4 source: %+v", ev.Packet)
		}
	})
}
