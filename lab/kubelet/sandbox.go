package kubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
)

// PodNetnsPrefix starts the name of every pod's network namespace. It shares
// the lab's prefix, so that `nettrace-lab down` finds them all.
const PodNetnsPrefix = "nettrace-pod-"

// newSandbox creates the pod's network namespace (the "pause" sandbox) with
// its resolv.conf, hosts and hostname, then wires it with CNI ADD. A pod with
// hostNetwork shares the node's netns instead.
func (k *Kubelet) newSandbox(ctx context.Context, pod *corev1.Pod) (*podRuntime, error) {
	id := make([]byte, 32)
	_, _ = rand.Read(id)
	pr := &podRuntime{
		UID:         pod.UID,
		Namespace:   pod.Namespace,
		Name:        pod.Name,
		SandboxID:   hex.EncodeToString(id),
		HostNetwork: pod.Spec.HostNetwork,
		Created:     time.Now(),
		Containers:  map[string]*containerRuntime{},
	}
	if pod.Spec.HostNetwork {
		pr.Netns = k.cfg.NodeNetns
		pr.PodIP = k.cfg.NodeIP
		pr.NetworkReady = true
		return pr, nil
	}
	pr.Netns = podNetnsName(pod)
	if err := createNetns(pr.Netns); err != nil {
		return nil, err
	}
	if err := k.writePodFiles(pod, pr.Netns); err != nil {
		_ = deleteNetns(pr.Netns)
		return nil, err
	}
	ip, err := k.cni.add(ctx, pr)
	if err != nil {
		// CNI ADD failed: give the plugin its DEL, as containerd does, so
		// nothing it made stays behind, then drop the netns.
		_ = k.cni.del(context.WithoutCancel(ctx), pr)
		_ = deleteNetns(pr.Netns)
		return nil, err
	}
	pr.PodIP = ip
	pr.NetworkReady = true
	return pr, nil
}

// podNetnsName is "nettrace-pod-<namespace>-<name>-<uid prefix>", cut to a
// length that every tool accepts.
func podNetnsName(pod *corev1.Pod) string {
	name := fmt.Sprintf("%s-%s", pod.Namespace, pod.Name)
	if len(name) > 40 {
		name = name[:40]
	}
	return PodNetnsPrefix + name + "-" + string(pod.UID)[:8]
}

// writePodFiles writes the files that `ip netns exec` bind-mounts over /etc
// for the pod's processes: resolv.conf, hosts and hostname.
func (k *Kubelet) writePodFiles(pod *corev1.Pod, netnsName string) error {
	dir := filepath.Join("/etc/netns", netnsName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	files := map[string]string{
		"resolv.conf": k.resolvConf(pod),
		"hostname":    pod.Name + "\n",
		"hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("writing pod %s: %w", name, err)
		}
	}
	return nil
}

// resolvConf is the pod's resolv.conf for its dnsPolicy, as a kubelet
// writes it: the cluster DNS with the namespace's search path and ndots:5.
func (k *Kubelet) resolvConf(pod *corev1.Pod) string {
	policy := pod.Spec.DNSPolicy
	if policy == corev1.DNSDefault || (policy == corev1.DNSClusterFirst && pod.Spec.HostNetwork) {
		return k.cfg.NodeResolvConf
	}
	if policy == corev1.DNSNone && pod.Spec.DNSConfig != nil {
		var b strings.Builder
		for _, ns := range pod.Spec.DNSConfig.Nameservers {
			fmt.Fprintf(&b, "nameserver %s\n", ns)
		}
		if len(pod.Spec.DNSConfig.Searches) > 0 {
			fmt.Fprintf(&b, "search %s\n", strings.Join(pod.Spec.DNSConfig.Searches, " "))
		}
		return b.String()
	}
	d := k.cfg.ClusterDomain
	return fmt.Sprintf("search %s.svc.%s svc.%s %s\nnameserver %s\noptions ndots:5\n",
		pod.Namespace, d, d, d, k.cfg.ClusterDNS)
}

// teardownSandbox releases the pod's network (CNI DEL) and removes its netns
// and files. It is safe to call again after a partial teardown.
func (k *Kubelet) teardownSandbox(ctx context.Context, pr *podRuntime) error {
	if pr.HostNetwork {
		return nil
	}
	if err := k.cni.del(ctx, pr); err != nil {
		return err
	}
	if err := deleteNetns(pr.Netns); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join("/etc/netns", pr.Netns))
}

// createNetns makes a named netns with its loopback up.
func createNetns(name string) error {
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new netns; this thread
		// is never unlocked, so it dies with the goroutine.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("creating netns %s: %w", name, err)
			return
		}
		defer h.Close()
		// The lab is IPv4 only: without IPv6, a pod has the addresses the
		// seed's pods show (whoami prints 127.0.0.1 and the pod IP).
		for _, key := range []string{"all", "default"} {
			path := "/proc/sys/net/ipv6/conf/" + key + "/disable_ipv6"
			if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
				_ = netns.DeleteNamed(name)
				errc <- fmt.Errorf("disabling IPv6 in %s: %w", name, err)
				return
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			_ = netns.DeleteNamed(name)
			errc <- fmt.Errorf("setting lo up in %s: %w", name, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

func deleteNetns(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing netns %s: %w", name, err)
	}
	return nil
}
