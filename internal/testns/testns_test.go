package testns

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

func TestNewIsNamedUpAndRemoved(t *testing.T) {
	var path string
	t.Run("inner", func(t *testing.T) {
		n := New(t, "nettrace-testns-")
		path = n.Path()
		if !strings.HasPrefix(Name(n), "nettrace-testns-") || filepath.Dir(path) != "/run/netns" {
			t.Errorf("made %s, want /run/netns/nettrace-testns-*", path)
		}
		err := n.Do(func(ns.NetNS) error {
			lo, err := net.InterfaceByName("lo")
			if err == nil && lo.Flags&net.FlagUp == 0 {
				t.Error("lo is down")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s is still there after the test: %v", path, err)
	}
}
