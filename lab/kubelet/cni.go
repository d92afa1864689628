package kubelet

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// cniRuntime calls the node's CNI plugins as containerd does: the first
// configuration file of the configuration directory, in lexical order, with
// the pod's identity in CNI_ARGS.
type cniRuntime struct {
	confDir string
	cni     *libcni.CNIConfig
}

func newCNIRuntime(confDir, binDir, cacheDir string) (*cniRuntime, error) {
	return &cniRuntime{confDir: confDir, cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil)}, nil
}

// networkConfig loads the first configuration in the directory.
func (r *cniRuntime) networkConfig() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(r.confDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("reading CNI configuration directory %s: %w", r.confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no CNI configuration in %s: the network is not ready", r.confDir)
	}
	sort.Strings(files)
	list, err := libcni.NetworkConfFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("loading CNI configuration %s: %w", files[0], err)
	}
	return list, nil
}

func runtimeConf(pr *podRuntime) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: pr.SandboxID,
		NetNS:       "/run/netns/" + pr.Netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pr.Namespace},
			{"K8S_POD_NAME", pr.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", pr.SandboxID},
			{"K8S_POD_UID", string(pr.UID)},
		},
	}
}

// add wires the pod's netns and returns its IPv4 address.
func (r *cniRuntime) add(ctx context.Context, pr *podRuntime) (netip.Addr, error) {
	list, err := r.networkConfig()
	if err != nil {
		return netip.Addr{}, err
	}
	res, err := r.cni.AddNetworkList(ctx, list, runtimeConf(pr))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI ADD (%s): %w", list.Name, err)
	}
	result, err := types100.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI ADD result: %w", err)
	}
	for _, ipc := range result.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("CNI ADD (%s) returned no IPv4 address", list.Name)
}

// del releases the pod's network. It is safe to call more than once.
func (r *cniRuntime) del(ctx context.Context, pr *podRuntime) error {
	list, err := r.networkConfig()
	if err != nil {
		return err
	}
	if err := r.cni.DelNetworkList(ctx, list, runtimeConf(pr)); err != nil {
		return fmt.Errorf("CNI DEL (%s): %w", list.Name, err)
	}
	return nil
}
