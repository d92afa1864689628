package loadbalancer

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestPoolUsesEveryAddress(t *testing.T) {
	p := newPool(netip.MustParsePrefix("192.168.10.200/29"))
	for i := range 8 {
		svc := fmt.Sprintf("default/s%d", i)
		addr, ok := p.allocate(svc)
		want := netip.AddrFrom4([4]byte{192, 168, 10, byte(200 + i)})
		if !ok || addr != want {
			t.Fatalf("allocation %d = %s, %v; want %s", i, addr, ok, want)
		}
		if held, _ := p.assigned(svc); held != want {
			t.Fatalf("%s holds %s, want %s", svc, held, want)
		}
	}
	if addr, ok := p.allocate("default/ninth"); ok {
		t.Fatalf("ninth allocation from a /29 = %s, want exhaustion", addr)
	}
	if addr, ok := p.release("default/s3"); !ok || addr != netip.MustParseAddr("192.168.10.203") {
		t.Fatalf("release = %s, %v; want 192.168.10.203", addr, ok)
	}
	if addr, ok := p.allocate("default/ninth"); !ok || addr != netip.MustParseAddr("192.168.10.203") {
		t.Fatalf("allocation after release = %s, %v; want 192.168.10.203", addr, ok)
	}
	if _, ok := p.release("default/never"); ok {
		t.Error("released an address for a service that held none")
	}
}

func TestPoolAssign(t *testing.T) {
	p := newPool(netip.MustParsePrefix("192.168.10.200/29"))
	addr := netip.MustParseAddr("192.168.10.205")
	if err := p.assign("default/a", addr); err != nil {
		t.Fatal(err)
	}
	// Assigning again what a service holds is a no-op.
	if err := p.assign("default/a", addr); err != nil {
		t.Errorf("re-assigning a held address: %v", err)
	}
	for _, tc := range []struct {
		service string
		addr    string
		err     string
	}{
		{"default/b", "192.168.10.205", "192.168.10.205 is already used by default/a"},
		{"default/a", "192.168.10.206", "default/a already holds 192.168.10.205"},
		{"default/b", "192.168.10.208", "192.168.10.208 is not in pool 192.168.10.200/29"},
	} {
		err := p.assign(tc.service, netip.MustParseAddr(tc.addr))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("assign(%s, %s) = %v, want %q", tc.service, tc.addr, err, tc.err)
		}
	}
	// allocate hands out the seven other addresses, never the assigned one.
	for i := range 7 {
		got, ok := p.allocate(fmt.Sprintf("default/other%d", i))
		if !ok || got == addr {
			t.Fatalf("allocation %d = %s, %v; want a free address other than %s", i, got, ok, addr)
		}
	}
	if got, ok := p.allocate("default/last"); ok {
		t.Fatalf("allocation from a full pool = %s", got)
	}
}
