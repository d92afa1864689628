package conntrack

import (
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// eventsSysctl switches conntrack event delivery in a network namespace:
// 0 disables it, 1 enables it, 2 (the kernel's default) enables it for
// entries created while a listener is registered.
const eventsSysctl = "/proc/sys/net/netfilter/nf_conntrack_events"

// enableEvents makes sure the current netns delivers conntrack events and
// returns a function that restores the setting it found, in that netns,
// from whichever thread it is called.
func enableEvents() (restore func() error, err error) {
	b, err := os.ReadFile(eventsSysctl)
	if err != nil {
		return nil, fmt.Errorf("reading conntrack event setting: %w", err)
	}
	old := strings.TrimSpace(string(b))
	if old != "0" {
		return func() error { return nil }, nil
	}
	netns, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("opening the current netns: %w", err)
	}
	if err := os.WriteFile(eventsSysctl, []byte("1"), 0o644); err != nil {
		netns.Close()
		return nil, fmt.Errorf("enabling conntrack events: %w", err)
	}
	return func() error {
		defer netns.Close()
		err := netns.Do(func(ns.NetNS) error {
			return os.WriteFile(eventsSysctl, []byte(old), 0o644)
		})
		if err != nil {
			return fmt.Errorf("restoring %s to %s in %s: %w", eventsSysctl, old, netns.Path(), err)
		}
		return nil
	}, nil
}
