package engine

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubectl-nettrace/nettrace/trace/route"
)

// podLabel labels the hops seen inside a pod's namespace when its
// Kubernetes name is not known, as on a node without an API server.
func podLabel(ip netip.Addr) string { return "pod " + ip.String() }

// localPod finds, in the calling thread's namespace (the node's), the pod
// that owns ip: the node must route ip to a Calico veth (cali…), whose
// peer's namespace route.FindPod then finds, unless netns, the path of the
// pod's namespace, is given.
func localPod(ip netip.Addr, netns string) (route.Pod, error) {
	veth, err := podVeth(ip)
	if err != nil {
		return route.Pod{}, err
	}
	if netns != "" {
		return route.Pod{IP: ip, HostVeth: veth, Netns: netns}, nil
	}
	pod, err := route.FindPod(ip)
	if err != nil {
		return route.Pod{}, fmt.Errorf("finding the network namespace of pod %s: %w", ip, err)
	}
	return pod, nil
}

// watchOf watches a pod's namespace, with the veth pair that joins it to
// the node when the pod's end is known.
func watchOf(pod route.Pod) Watch {
	return Watch{Path: pod.Netns, Label: podLabel(pod.IP), HostVeth: pod.HostVeth, Iface: pod.PeerName}
}

// localPods finds, in the node's namespace, the pods of the node among
// addrs, each on a thread of its own. An address that is not a pod here, or
// whose namespace is not found, is left out: its veth is still captured,
// both ways.
func localPods(node ns.NetNS, addrs []netip.Addr) []route.Pod {
	found := make([]route.Pod, len(addrs))
	var wg sync.WaitGroup
	for i, ip := range addrs {
		wg.Go(func() {
			_ = node.Do(func(ns.NetNS) (err error) {
				found[i], err = localPod(ip, "")
				return err
			})
		})
	}
	wg.Wait()
	return slices.DeleteFunc(found, func(p route.Pod) bool { return p.Netns == "" })
}

// otherAddrs lists the addresses of ends, each once, other than those of
// skip.
func otherAddrs(ends []netip.AddrPort, skip ...netip.Addr) []netip.Addr {
	var addrs []netip.Addr
	for _, e := range ends {
		if a := e.Addr(); !slices.Contains(skip, a) && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// podVeth returns the pod veth (cali…) the node routes ip to, or a
// NotLocalPodError. The node's own underlay may be a veth too, as in the
// lab, so only Calico's names make a pod's.
func podVeth(ip netip.Addr) (string, error) {
	routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil || len(routes) == 0 || routes[0].LinkIndex == 0 {
		return "", &NotLocalPodError{IP: ip}
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return "", &NotLocalPodError{IP: ip}
		}
		return "", fmt.Errorf("reading interface %d, the route to %s: %w", routes[0].LinkIndex, ip, err)
	}
	if _, ok := link.(*netlink.Veth); !ok || !strings.HasPrefix(link.Attrs().Name, hostVethPrefix) {
		return "", &NotLocalPodError{IP: ip, Via: link.Attrs().Name}
	}
	return link.Attrs().Name, nil
}
