package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// namedNetnsDir is where `ip netns` and CNI runtimes keep named network
// namespaces.
const namedNetnsDir = "/var/run/netns"

// Pod is where a pod IP lives, seen from the node that hosts it.
type Pod struct {
	IP netip.Addr
	// HostVeth and HostIndex are the node's end of the pod's veth pair,
	// where the node's route to IP points (cali7715d358f22).
	HostVeth  string
	HostIndex int
	// PeerIndex and PeerName are the pod's end, inside its netns (eth0).
	PeerIndex int
	PeerName  string
	// Netns is the path of the pod's network namespace: a named netns under
	// /var/run/netns when there is one, else /proc/PID/ns/net of a process
	// in it.
	Netns string
}

// FindPod finds the pod that owns ip on the node whose netns is current:
// the node's route to ip names the host veth, the veth names its peer's
// ifindex and netns id, and the pod's netns is the one, among the named
// namespaces and those of running processes, that has this id and whose
// interface with that ifindex is the veth's peer and holds ip.
func FindPod(ip netip.Addr) (Pod, error) {
	routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil {
		return Pod{}, fmt.Errorf("looking up the route to pod %s: %w", ip, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return Pod{}, fmt.Errorf("the route to pod %s names no interface", ip)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return Pod{}, fmt.Errorf("reading interface %d, the route to pod %s: %w", routes[0].LinkIndex, ip, err)
	}
	veth, ok := link.(*netlink.Veth)
	if !ok {
		return Pod{}, fmt.Errorf("pod %s is not on this node: its route goes to %s %s, not a veth",
			ip, link.Type(), link.Attrs().Name)
	}
	pod := Pod{IP: ip, HostVeth: veth.Name, HostIndex: veth.Index, PeerIndex: veth.ParentIndex}
	if pod.PeerIndex == 0 {
		if pod.PeerIndex, err = netlink.VethPeerIndex(veth); err != nil {
			return Pod{}, fmt.Errorf("reading the peer of %s: %w", veth.Name, err)
		}
	}
	candidates, err := netnsPaths()
	if err != nil {
		return Pod{}, err
	}
	// A namespace that cannot be read is passed over: other programs create
	// and delete namespaces all the time, and one going away answers with
	// an error. The errors are told only when no namespace matched.
	var skipped []error
	for _, path := range candidates {
		name, found, err := podEnd(path, veth.NetNsID, pod)
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		if found {
			pod.PeerName, pod.Netns = name, path
			return pod, nil
		}
	}
	err = fmt.Errorf("no network namespace holds the peer (ifindex %d) of %s with %s", pod.PeerIndex, veth.Name, ip)
	if len(skipped) > 0 {
		err = fmt.Errorf("%w (%d namespaces could not be read: %w)", err, len(skipped), errors.Join(skipped...))
	}
	return Pod{}, err
}

// netnsPaths lists one path for each network namespace other than the
// current one: named namespaces first, then those of processes.
func netnsPaths() ([]string, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	if self, err := os.Stat("/proc/thread-self/ns/net"); err == nil {
		st := self.Sys().(*syscall.Stat_t)
		seen[inode{st.Dev, st.Ino}] = true
	}
	named, err := filepath.Glob(filepath.Join(namedNetnsDir, "*"))
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", namedNetnsDir, err)
	}
	procs, err := filepath.Glob("/proc/[0-9]*/ns/net")
	if err != nil {
		return nil, fmt.Errorf("listing process network namespaces: %w", err)
	}
	var paths []string
	for _, path := range append(named, procs...) {
		fi, err := os.Stat(path)
		if err != nil {
			continue // the process exited, or the name is being removed
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[inode{st.Dev, st.Ino}] {
			continue
		}
		seen[inode{st.Dev, st.Ino}] = true
		paths = append(paths, path)
	}
	return paths, nil
}

// podEnd reports whether the netns at path is the pod's: its netns id, as
// the current netns knows it, is peerNsID (when the veth reported one), and
// its interface with the peer's ifindex is a veth linked to the host's end
// that holds the pod's IP. It returns that interface's name.
func podEnd(path string, peerNsID int, pod Pod) (string, bool, error) {
	handle, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("opening netns %s: %w", path, err)
	}
	defer handle.Close()
	if peerNsID >= 0 {
		id, err := netlink.GetNetNsIdByFd(int(handle))
		if err != nil {
			return "", false, fmt.Errorf("reading the netns id of %s: %w", path, err)
		}
		if id != peerNsID {
			return "", false, nil
		}
	}
	nl, err := netlink.NewHandleAt(handle)
	if err != nil {
		return "", false, fmt.Errorf("opening netlink in netns %s: %w", path, err)
	}
	defer nl.Close()
	link, err := nl.LinkByIndex(pod.PeerIndex)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("reading interface %d in netns %s: %w", pod.PeerIndex, path, err)
	}
	if _, ok := link.(*netlink.Veth); !ok || link.Attrs().ParentIndex != pod.HostIndex {
		return "", false, nil
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return "", false, fmt.Errorf("listing addresses of %s in netns %s: %w", link.Attrs().Name, path, err)
	}
	for _, a := range addrs {
		if addr, ok := netip.AddrFromSlice(a.IP); ok && addr.Unmap() == pod.IP {
			return link.Attrs().Name, true, nil
		}
	}
	return "", false, nil
}
