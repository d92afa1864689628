package pcapng

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

// writeFile writes interfaces and packets with a Writer and returns the file.
func writeFile(t testing.TB, interfaces []Interface, packets []Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for n, i := range interfaces {
		id, err := w.AddInterface(i)
		if err != nil || id != n {
			t.Fatalf("AddInterface(%v) = %d, %v; want %d", i, id, err, n)
		}
	}
	for _, p := range packets {
		if err := w.WritePacket(p); err != nil {
			t.Fatalf("WritePacket: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readAll(t testing.TB, data []byte) ([]Interface, []Packet) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	var packets []Packet
	for {
		p, err := r.Next()
		if err == io.EOF {
			return r.Interfaces(), packets
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		packets = append(packets, p)
	}
}

func node(name string) []Interface {
	return []Interface{
		{Name: name + "/eth0", Description: "netns " + name, LinkType: layers.LinkTypeEthernet, Snaplen: 128},
		{Name: name + "/tunl0", LinkType: layers.LinkTypeRaw, Snaplen: 128},
	}
}

func TestRoundTrip(t *testing.T) {
	interfaces := node("k8s-w1")
	packets := []Packet{
		{Interface: 0, Time: t0, Data: []byte{1, 2, 3, 4, 5}, Length: 1500, Direction: Outbound, Comment: "tcp 1.2.3.4:1 > 5.6.7.8:2 S"},
		{Interface: 1, Time: t0.Add(time.Millisecond), Data: []byte{0x45, 0, 0, 20}, Length: 4, Direction: Inbound},
		{Interface: 0, Time: t0.Add(2 * time.Millisecond), Data: make([]byte, 64), Length: 64, Comment: "ärp ✓"},
	}
	gotIfaces, got := readAll(t, writeFile(t, interfaces, packets))
	if !reflect.DeepEqual(gotIfaces, interfaces) {
		t.Errorf("interfaces\n got %+v\nwant %+v", gotIfaces, interfaces)
	}
	if len(got) != len(packets) {
		t.Fatalf("read %d packets, want %d", len(got), len(packets))
	}
	for i := range packets {
		want := packets[i]
		want.Time = want.Time.Local()
		if got[i].Time.Equal(want.Time) {
			got[i].Time = want.Time
		}
		if !reflect.DeepEqual(got[i], want) {
			t.Errorf("packet %d\n got %+v\nwant %+v", i, got[i], want)
		}
	}
}

func TestWriterErrors(t *testing.T) {
	w, err := NewWriter(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WritePacket(Packet{Interface: 0, Data: []byte{1}}); err == nil {
		t.Error("packet on an interface not added: no error")
	}
}

// bigEndianFile is a pcapng file written by a big-endian host, with
// microsecond timestamps (the default resolution) and an offset.
func bigEndianFile() []byte {
	be := binary.BigEndian
	block := func(typ uint32, body []byte) []byte {
		total := uint32(12 + len(body))
		b := be.AppendUint32(nil, typ)
		b = be.AppendUint32(b, total)
		b = append(b, body...)
		return be.AppendUint32(b, total)
	}
	shb := be.AppendUint32(nil, byteOrderMagic)
	shb = be.AppendUint16(shb, 1)
	shb = be.AppendUint16(shb, 0)
	shb = be.AppendUint64(shb, unknownSectionLength)
	idb := be.AppendUint16(nil, uint16(layers.LinkTypeRaw))
	idb = be.AppendUint16(idb, 0)
	idb = be.AppendUint32(idb, 0)
	idb = be.AppendUint16(idb, optIfName)
	idb = be.AppendUint16(idb, 4)
	idb = append(idb, "w2/x"...)
	idb = be.AppendUint16(idb, optIfTsOffset)
	idb = be.AppendUint16(idb, 8)
	idb = be.AppendUint64(idb, 10)
	idb = be.AppendUint32(idb, 0)
	ts := uint64(1_500_000_250) // 1500 s and 250 µs
	epb := be.AppendUint32(nil, 0)
	epb = be.AppendUint32(epb, uint32(ts>>32))
	epb = be.AppendUint32(epb, uint32(ts))
	epb = be.AppendUint32(epb, 3)
	epb = be.AppendUint32(epb, 3)
	epb = append(epb, 0x45, 0, 0, 0)
	spb := be.AppendUint32(nil, 2)
	spb = append(spb, 9, 9, 0, 0)
	out := block(blockSectionHeader, shb)
	out = append(out, block(blockInterface, idb)...)
	out = append(out, block(0x0BAD, nil)...) // an unknown block, skipped
	out = append(out, block(blockEnhancedPacket, epb)...)
	return append(out, block(blockSimplePacket, spb)...)
}

func TestReadBigEndian(t *testing.T) {
	ifaces, packets := readAll(t, bigEndianFile())
	if len(ifaces) != 1 || ifaces[0].Name != "w2/x" || ifaces[0].LinkType != layers.LinkTypeRaw {
		t.Fatalf("interfaces %+v", ifaces)
	}
	if len(packets) != 2 {
		t.Fatalf("read %d packets, want 2", len(packets))
	}
	want := time.Unix(1510, 250_000)
	if p := packets[0]; !p.Time.Equal(want) || !bytes.Equal(p.Data, []byte{0x45, 0, 0}) || p.Length != 3 {
		t.Errorf("enhanced packet %+v, want 3 bytes at %v", p, want)
	}
	if p := packets[1]; !bytes.Equal(p.Data, []byte{9, 9}) || p.Length != 2 {
		t.Errorf("simple packet %+v", p)
	}
}

func TestTimeResolutions(t *testing.T) {
	for _, tc := range []struct {
		resolution byte
		ts         uint64
		want       time.Time
	}{
		{6, 1_000_001, time.Unix(1, 1000)},
		{9, 1_000_000_001, time.Unix(1, 1)},
		{12, 1_000_000_000_001_000, time.Unix(1000, 1)},
		{0x80 | 10, 3<<10 | 512, time.Unix(3, 500_000_000)},
		{0x80 | 40, 1<<40 | 1<<38, time.Unix(1, 250_000_000)},
	} {
		conv, err := timeConverter(tc.resolution, 0)
		if err != nil {
			t.Fatalf("resolution %#x: %v", tc.resolution, err)
		}
		if got := conv(tc.ts); !got.Equal(tc.want) {
			t.Errorf("resolution %#x: %d is %v, want %v", tc.resolution, tc.ts, got, tc.want)
		}
	}
	for _, bad := range []byte{20, 0x80 | 64} {
		if _, err := timeConverter(bad, 0); err == nil {
			t.Errorf("resolution %#x: no error", bad)
		}
	}
}

func TestReadMalformed(t *testing.T) {
	good := writeFile(t, node("n"), []Packet{{Interface: 1, Time: t0, Data: []byte{0x45}}})
	for name, data := range map[string][]byte{
		"empty":               {},
		"not a section":       good[28:],
		"truncated":           good[:len(good)-3],
		"bad trailer":         append(append([]byte{}, good[:len(good)-1]...), 0xff),
		"bad magic":           append(append(append([]byte{}, good[:8]...), 1, 2, 3, 4), good[12:]...),
		"huge block":          append(append(append([]byte{}, good[:4]...), 0xf0, 0xff, 0xff, 0x7f), good[8:]...),
		"packet before iface": withoutInterfaces(t),
	} {
		r, err := NewReader(bytes.NewReader(data))
		for err == nil {
			_, err = r.Next()
		}
		if err == io.EOF {
			t.Errorf("%s: read to the end without error", name)
		} else if !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err %v, want ErrFormat", name, err)
		}
	}
}

// withoutInterfaces is a file whose packet refers to interface 0 while no
// interface was described.
func withoutInterfaces(t *testing.T) []byte {
	full := writeFile(t, node("n")[:1], []Packet{{Interface: 0, Time: t0, Data: []byte{1}}})
	shbLen := int(binary.LittleEndian.Uint32(full[4:]))
	idbLen := int(binary.LittleEndian.Uint32(full[shbLen+4:]))
	return append(append([]byte{}, full[:shbLen]...), full[shbLen+idbLen:]...)
}

func TestMerge(t *testing.T) {
	w1 := writeFile(t, node("k8s-w1"), []Packet{
		{Interface: 0, Time: t0, Data: []byte{1}, Comment: "first"},
		{Interface: 1, Time: t0.Add(20 * time.Millisecond), Data: []byte{3}, Comment: "third"},
	})
	w2 := writeFile(t, node("k8s-w2"), []Packet{
		{Interface: 1, Time: t0.Add(10 * time.Millisecond), Data: []byte{2}, Comment: "second"},
		{Interface: 0, Time: t0.Add(30 * time.Millisecond), Data: []byte{4}, Comment: "fourth"},
	})
	var merged bytes.Buffer
	if err := Merge(&merged, bytes.NewReader(w1), bytes.NewReader(w2)); err != nil {
		t.Fatalf("Merge: %v", err)
	}
	ifaces, packets := readAll(t, merged.Bytes())
	wantIfaces := append(node("k8s-w1"), node("k8s-w2")...)
	if !reflect.DeepEqual(ifaces, wantIfaces) {
		t.Errorf("interfaces\n got %+v\nwant %+v", ifaces, wantIfaces)
	}
	var got []string
	for _, p := range packets {
		got = append(got, p.Comment+"@"+ifaces[p.Interface].Name)
	}
	want := []string{"first@k8s-w1/eth0", "second@k8s-w2/tunl0", "third@k8s-w1/tunl0", "fourth@k8s-w2/eth0"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merged packets %q, want %q", got, want)
	}
	if err := Merge(io.Discard, bytes.NewReader(w1), strings.NewReader("junk")); err == nil {
		t.Error("merging junk: no error")
	}
}

// tsharkFields runs the real tshark on data and returns one line of
// interface name and comment per packet.
func tsharkFields(t *testing.T, data []byte) []string {
	t.Helper()
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Fatalf("tshark is needed to check the files: %v", err)
	}
	file := filepath.Join(t.TempDir(), "trace.pcapng")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tshark, "-r", file, "-T", "fields", "-e", "frame.interface_name",
		"-e", "frame.comment", "-e", "frame.len", "-e", "frame.cap_len").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.Contains(l, "\t") {
			continue // tshark's warnings when run as root
		}
		lines = append(lines, l)
	}
	return lines
}

func TestTsharkReads(t *testing.T) {
	ip := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x9c, 0x41, 0, 53, 0, 8, 0, 0}
	w1 := writeFile(t, node("k8s-w1"), []Packet{
		{Interface: 1, Time: t0, Data: ip, Length: 1000, Comment: "udp 10.0.0.1:40001 > 10.0.0.2:53"},
	})
	w2 := writeFile(t, node("k8s-w2"), []Packet{
		{Interface: 1, Time: t0.Add(-time.Second), Data: ip, Length: 28, Comment: "earlier, on w2", Direction: Inbound},
	})
	want := []string{"k8s-w1/tunl0\tudp 10.0.0.1:40001 > 10.0.0.2:53\t1000\t28"}
	if got := tsharkFields(t, w1); !reflect.DeepEqual(got, want) {
		t.Errorf("tshark on one file:\n got %q\nwant %q", got, want)
	}
	var merged bytes.Buffer
	if err := Merge(&merged, bytes.NewReader(w1), bytes.NewReader(w2)); err != nil {
		t.Fatal(err)
	}
	want = []string{"k8s-w2/tunl0\tearlier, on w2\t28\t28", want[0]}
	if got := tsharkFields(t, merged.Bytes()); !reflect.DeepEqual(got, want) {
		t.Errorf("tshark on the merged file:\n got %q\nwant %q", got, want)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(writeFile(f, node("k8s-w1"), []Packet{{Interface: 1, Time: t0, Data: []byte{0x45, 0}, Comment: "c", Direction: Outbound}}))
	f.Add(bigEndianFile())
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		for range 1000 {
			p, err := r.Next()
			if err != nil {
				return
			}
			if p.Interface < 0 || p.Interface >= len(r.Interfaces()) {
				t.Fatalf("packet on interface %d of %d", p.Interface, len(r.Interfaces()))
			}
		}
	})
}
