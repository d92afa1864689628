package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/containernetworking/plugins/pkg/ns"
)

// inThread runs fn on a locked OS thread that is thrown away afterwards, so
// that a namespace switch inside fn cannot leak to other goroutines.
func inThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Not unlocked: the thread exits with the goroutine.
		errc <- fn()
	}()
	return <-errc
}

// writeSysctl sets a sysctl under /proc/sys inside the named netns.
func writeSysctl(netnsName, key, value string) error {
	return ns.WithNetNSPath(NetnsPath(netnsName), func(ns.NetNS) error {
		path := filepath.Join("/proc/sys", key)
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in %s: %w", key, value, netnsName, err)
		}
		return nil
	})
}
