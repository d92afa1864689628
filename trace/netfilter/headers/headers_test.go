package headers

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/kubectl-nettrace/nettrace/trace"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name string
		hex  string
		want *trace.Packet
	}{
		{"TCP SYN", "4500003c5c8640004006c96f0a0100020a600064a8150050cab96abf00000000a002faf014f50000020405b4",
			&trace.Packet{Proto: trace.TCP, Src: netip.MustParseAddr("10.1.0.2"), SrcPort: 43029, Dst: netip.MustParseAddr("10.96.0.100"), DstPort: 80, Length: 60, TTL: 64, TCPFlags: "S"}},
		{"ICMP echo request", "450000549ae1400040018bc10a0100020a02000208006fdd0bf10001",
			&trace.Packet{Proto: trace.ICMP, Src: netip.MustParseAddr("10.1.0.2"), Dst: netip.MustParseAddr("10.2.0.2"), Length: 84, TTL: 64, ICMPType: 8, ICMPID: 3057, ICMPSeq: 1}},
		{"ICMP port unreachable", "45000038000100004001000a0a0200020a0100020303abcd00000000",
			&trace.Packet{Proto: trace.ICMP, Src: netip.MustParseAddr("10.2.0.2"), Dst: netip.MustParseAddr("10.1.0.2"), Length: 56, TTL: 64, ICMPType: 3, ICMPCode: 3}},
		{"UDP with IP options", "4600002000000000401100000a0000010a00000201010100d43100350008abcd",
			&trace.Packet{Proto: trace.UDP, Src: netip.MustParseAddr("10.0.0.1"), SrcPort: 54321, Dst: netip.MustParseAddr("10.0.0.2"), DstPort: 53, Length: 32, TTL: 64}},
		{"TCP cut before the flags", "4500003c00000000400600000a0000010a000002a8150050",
			&trace.Packet{Proto: trace.TCP, Src: netip.MustParseAddr("10.0.0.1"), SrcPort: 43029, Dst: netip.MustParseAddr("10.0.0.2"), DstPort: 80, Length: 60, TTL: 64}},
		{"later fragment", "4500003c000000b9401100000a0000010a000002d4310035",
			&trace.Packet{Proto: trace.UDP, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Length: 60, TTL: 64}},
		{"other protocol", "4500003c00000000402f00000a0000010a000002",
			&trace.Packet{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Length: 60, TTL: 64}},
	} {
		got, err := Decode(mustHex(t, tc.hex))
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Decode = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, hx := range map[string]string{
		"empty":           "",
		"short":           "4500003c5c864000",
		"IPv6":            "6000000000140640fe800000000000000000000000000001",
		"header too long": "4f00003c00000000400600000a0000010a000002",
		"IHL below 5":     "4400003c00000000400600000a0000010a000002",
	} {
		if p, err := Decode(mustHex(t, hx)); err == nil {
			t.Errorf("%s: decoded %+v", name, p)
		}
	}
	if _, err := Decode(mustHex(t, "4500")); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated header: %v, want ErrTruncated", err)
	}
}

func TestTCPFlags(t *testing.T) {
	for flags, want := range map[byte]string{0x02: "S", 0x12: "S.", 0x10: ".", 0x18: "P.", 0x11: "F.", 0x14: "R.", 0x04: "R", 0xc2: "SEW", 0: "none"} {
		if got := TCPFlags(flags); got != want {
			t.Errorf("TCPFlags(%#x) = %q, want %q", flags, got, want)
		}
	}
}
