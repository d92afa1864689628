package nflogtrace

import (
	"bufio"
	"encoding/hex"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	nflog "github.com/florianl/go-nflog/v2"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// capturedEvent is one line of testdata/trace-events.txt: a real TRACE
// event.
type capturedEvent struct {
	prefix        string
	payload       []byte
	in, out, mark uint32
}

func capturedEvents(t testing.TB) map[int]capturedEvent {
	t.Helper()
	f, err := os.Open("testdata/trace-events.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	events := map[int]capturedEvent{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if strings.HasPrefix(text, "#") {
			continue
		}
		end := strings.LastIndex(text, `"`)
		prefix, err := strconv.Unquote(text[:end+1])
		fields := strings.Fields(text[end+1:])
		if err != nil || len(fields) != 4 {
			t.Fatalf("line %d: malformed %q", line, text)
		}
		payload, err := hex.DecodeString(fields[0])
		if err != nil {
			t.Fatalf("line %d: %v", line, err)
		}
		num := func(s string) uint32 {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				t.Fatalf("line %d: %v", line, err)
			}
			return uint32(n)
		}
		events[line] = capturedEvent{prefix, payload, num(fields[1]), num(fields[2]), num(fields[3])}
	}
	return events
}

// attribute makes the nflog attributes go-nflog would hand over.
func (e capturedEvent) attribute() nflog.Attribute {
	a := nflog.Attribute{Prefix: &e.prefix, Payload: &e.payload}
	if e.in != 0 {
		a.InDev = &e.in
	}
	if e.out != 0 {
		a.OutDev = &e.out
	}
	if e.mark != 0 {
		a.Mark = &e.mark
	}
	return a
}

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Prefix
	}{
		{"TRACE: raw:PREROUTING:policy:5 ", Prefix{Table: "raw", Chain: "PREROUTING", Type: "policy", Number: 5}},
		{"TRACE: nat:KUBE-SVC-XXXX:rule:2 ", Prefix{Table: "nat", Chain: "KUBE-SVC-XXXX", Type: "rule", Number: 2}},
		{"TRACE: filter:KUBE-FORWARD:return:4 ", Prefix{Table: "filter", Chain: "KUBE-FORWARD", Type: "return", Number: 4}},
		{"TRACE: filter:odd:chain:rule:1 ", Prefix{Table: "filter", Chain: "odd:chain", Type: "rule", Number: 1}},
		{"TRACE: mangle:POSTROUTING:rule:12", Prefix{Table: "mangle", Chain: "POSTROUTING", Type: "rule", Number: 12}},
	} {
		got, err := ParsePrefix(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePrefix(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParsePrefix("DROPPED: IN=eth0 "); err != ErrNotTrace {
		t.Errorf("a LOG prefix gave %v, want ErrNotTrace", err)
	}
	for _, bad := range []string{"TRACE: ", "TRACE: raw", "TRACE: raw:PREROUTING", "TRACE: raw:PREROUTING:rule:x ",
		"TRACE: raw:PREROUTING:rule:0 ", "TRACE: raw:PREROUTING:jump:1 ", "TRACE: :PREROUTING:rule:1 ", "TRACE: raw::1 "} {
		if p, err := ParsePrefix(bad); err == nil {
			t.Errorf("ParsePrefix(%q) = %+v", bad, p)
		}
	}
}

func TestDecodeCapturedEvents(t *testing.T) {
	events := capturedEvents(t)
	if len(events) < 40 {
		t.Fatalf("%d captured events, want the whole file", len(events))
	}
	for line, e := range events {
		if _, err := Decode(e.attribute()); err != nil {
			t.Errorf("line %d: %v", line, err)
		}
	}
	client, vip := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.96.0.100")
	for _, tc := range []struct {
		line int
		want Event
	}{
		{3, Event{Prefix: Prefix{"raw", "PREROUTING", "policy", 5}, InIndex: 2,
			Packet: &trace.Packet{Proto: trace.TCP, Src: client, SrcPort: 43029, Dst: vip, DstPort: 80, Length: 60, TTL: 64, TCPFlags: "S"}}},
		{8, Event{Prefix: Prefix{"nat", "KUBE-MARK-MASQ", "return", 2}, InIndex: 2, Mark: 0x4000,
			Packet: &trace.Packet{Proto: trace.TCP, Src: client, SrcPort: 43029, Dst: vip, DstPort: 80, Length: 60, TTL: 64, TCPFlags: "S", Mark: 0x4000}}},
		{17, Event{Prefix: Prefix{"filter", "FORWARD", "rule", 1}, InIndex: 3, OutIndex: 2,
			Packet: &trace.Packet{Proto: trace.TCP, Src: netip.MustParseAddr("10.2.0.2"), SrcPort: 8080, Dst: client, DstPort: 43029, Length: 60, TTL: 63, TCPFlags: "S."}}},
		{33, Event{Prefix: Prefix{"nat", "PREROUTING", "rule", 1}, InIndex: 2,
			Packet: &trace.Packet{Proto: trace.ICMP, Src: client, Dst: netip.MustParseAddr("10.2.0.2"), Length: 84, TTL: 64, ICMPType: 8, ICMPID: 3057, ICMPSeq: 1}}},
	} {
		got, err := Decode(events[tc.line].attribute())
		if err != nil {
			t.Errorf("line %d: %v", tc.line, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("line %d:\n got %+v %+v\nwant %+v %+v", tc.line, got, got.Packet, tc.want, tc.want.Packet)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	prefix, short := "TRACE: raw:PREROUTING:rule:1 ", []byte{0x45, 0}
	if _, err := Decode(nflog.Attribute{}); err != ErrNotTrace {
		t.Errorf("no prefix: %v, want ErrNotTrace", err)
	}
	if _, err := Decode(nflog.Attribute{Prefix: &prefix}); err == nil {
		t.Error("no payload decoded")
	}
	if _, err := Decode(nflog.Attribute{Prefix: &prefix, Payload: &short}); err == nil {
		t.Error("a truncated payload decoded")
	}
}

// FuzzDecode feeds the prefix and packet decoder mutations of real TRACE
// events.
func FuzzDecode(f *testing.F) {
	for _, e := range capturedEvents(f) {
		f.Add(e.prefix, e.payload)
	}
	f.Fuzz(func(t *testing.T, prefix string, payload []byte) {
		ev, err := Decode(nflog.Attribute{Prefix: &prefix, Payload: &payload})
		if err != nil {
			return
		}
		if ev.Table == "" || ev.Chain == "" || ev.Number < 1 {
			t.Errorf("decoded %q into %+v", prefix, ev.Prefix)
		}
		if ev.Packet == nil || !ev.Packet.Src.Is4() || !ev.Packet.Dst.Is4() {
			t.Errorf("decoded a payload into %+v", ev.Packet)
		}
	})
}
