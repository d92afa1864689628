package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPeerTableFindsOwnerByLongestPrefix(t *testing.T) {
	table := newPeerTable([]Block{
		{CIDR: netip.MustParsePrefix("172.16.2.0/24"), Node: "node2", NodeIP: netip.MustParseAddr("192.168.10.102")},
		{CIDR: netip.MustParsePrefix("172.16.2.64/26"), Node: "node3", NodeIP: netip.MustParseAddr("192.168.10.103")},
		{CIDR: netip.MustParsePrefix("172.16.7.0/24"), Node: "node2", NodeIP: netip.MustParseAddr("192.168.10.102")},
		{CIDR: netip.MustParsePrefix("172.16.9.9/32"), Node: "node3", NodeIP: netip.MustParseAddr("192.168.10.103")},
	})
	for dst, want := range map[string]string{
		"172.16.2.1":   "192.168.10.102",
		"172.16.2.70":  "192.168.10.103",
		"172.16.2.128": "192.168.10.102",
		"172.16.7.255": "192.168.10.102",
		"172.16.9.9":   "192.168.10.103",
		"172.16.9.8":   "",
		"172.16.3.1":   "",
	} {
		to, ok := table.owner(netip.MustParseAddr(dst).As4())
		got := ""
		if ok {
			got = netip.AddrFrom4(to.Addr).String()
		}
		if got != want {
			t.Errorf("owner of %s = %q, want %q", dst, got, want)
		}
	}
	if a, b := table.owners[blockKey([4]byte{172, 16, 2, 1}, 24)], table.owners[blockKey([4]byte{172, 16, 7, 1}, 24)]; a != b {
		t.Error("two blocks of node2 got two socket addresses; want one per node")
	}
}

// ipipPacket is an IPIP packet from src with outer options of optionWords 32-bit words and an
// inner packet of innerLen bytes, followed by trailing bytes.
func ipipPacket(src [4]byte, optionWords, innerLen, trailing int) []byte {
	headerLen := ipv4HeaderLen + 4*optionWords
	p := make([]byte, headerLen+innerLen+trailing)
	p[0] = 0x40 | byte(headerLen/4)
	p[9] = unix.IPPROTO_IPIP
	copy(p[12:16], src[:])
	inner := p[headerLen:]
	inner[0] = 0x45
	inner[2], inner[3] = byte(innerLen>>8), byte(innerLen)
	for i := ipv4HeaderLen; i < innerLen; i++ {
		inner[i] = byte(i)
	}
	return p
}

func TestDecapsulateAcceptsOnlyWholePacketsFromNodes(t *testing.T) {
	node := [4]byte{192, 168, 10, 102}
	table := newPeerTable([]Block{{CIDR: netip.MustParsePrefix("172.16.2.0/24"), Node: "node2", NodeIP: netip.AddrFrom4(node)}})

	for _, tc := range []struct {
		name      string
		packet    []byte
		verdict   verdict
		innerFrom int
		innerLen  int
	}{
		{"plain", ipipPacket(node, 0, 84, 0), deliver, 20, 84},
		{"outer options", ipipPacket(node, 2, 60, 0), deliver, 28, 60},
		{"trailing bytes", ipipPacket(node, 0, 40, 6), deliver, 20, 40},
		{"unknown source", ipipPacket([4]byte{192, 168, 10, 99}, 0, 84, 0), dropUnknownSource, 0, 0},
		{"truncated outer", ipipPacket(node, 0, 84, 0)[:12], dropMalformed, 0, 0},
		{"truncated inner", ipipPacket(node, 0, 84, 0)[:60], dropMalformed, 0, 0},
		{"header length below 20", func() []byte { p := ipipPacket(node, 0, 84, 0); p[0] = 0x44; return p }(), dropMalformed, 0, 0},
		{"inner IPv6", func() []byte { p := ipipPacket(node, 0, 84, 0); p[20] = 0x60; return p }(), dropMalformed, 0, 0},
		{"outer IPv6", func() []byte { p := ipipPacket(node, 0, 84, 0); p[0] = 0x65; return p }(), dropMalformed, 0, 0},
	} {
		inner, v := table.decapsulate(tc.packet)
		if v != tc.verdict {
			t.Errorf("%s: verdict %d, want %d", tc.name, v, tc.verdict)
			continue
		}
		if v == deliver && !bytes.Equal(inner, tc.packet[tc.innerFrom:tc.innerFrom+tc.innerLen]) {
			t.Errorf("%s: inner packet is %d bytes from the wrong place", tc.name, len(inner))
		}
	}
}

func TestIPIPPathFollowsTheKernel(t *testing.T) {
	for _, tc := range []struct {
		addErr error
		want   ipipPath
		fails  bool
	}{
		{nil, kernelPath, false},
		{unix.EEXIST, kernelPath, false},
		{fmt.Errorf("netlink: %w", unix.EEXIST), kernelPath, false},
		{unix.EOPNOTSUPP, userspacePath, false},
		{unix.EPERM, 0, true},
	} {
		got, err := ipipPathFor(tc.addErr)
		if (err != nil) != tc.fails || (!tc.fails && got != tc.want) {
			t.Errorf("ipipPathFor(%v) = %d, %v; want %d, failing %v", tc.addErr, got, err, tc.want, tc.fails)
		}
		if tc.fails && !errors.Is(err, tc.addErr) {
			t.Errorf("ipipPathFor(%v) error %v does not wrap the cause", tc.addErr, err)
		}
	}
}

func TestTTLMessageCarriesTheTTL(t *testing.T) {
	m := newTTLMessage()
	m.set(63)
	msgs, err := unix.ParseSocketControlMessage(m)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("parsing the TTL message: %d messages, %v", len(msgs), err)
	}
	h := msgs[0].Header
	if h.Level != unix.IPPROTO_IP || h.Type != unix.IP_TTL || len(msgs[0].Data) != 4 || binary.NativeEndian.Uint32(msgs[0].Data) != 63 {
		t.Errorf("TTL message is level %d type %d data %v, want IPPROTO_IP, IP_TTL, 63", h.Level, h.Type, msgs[0].Data)
	}
}
