package route

import "github.com/containernetworking/plugins/pkg/ns"

// InNetns runs fn on a thread that is in the network namespace at path, such
// as a path FindPod returns, and returns its error. Sockets fn opens stay in
// that namespace; goroutines fn starts do not run in it.
func InNetns(path string, fn func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}
