// Package lab runs a multi-node Kubernetes cluster on one machine. Nodes are
// network namespaces on an underlay bridge; the control plane is real
// Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
// in the k8s-m node; every node runs the project's node runtime (lab/kubelet)
// and dataplane daemon (bin/nettrace-node); an "external" netns is the
// outside world. Up builds it, Down removes every trace of it.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// DefaultStateDir holds the lab's state: PKI, etcd data, kubeconfigs, logs,
// pid files and per-node files.
const DefaultStateDir = "/var/lib/nettrace-lab"

// Service proxies the lab can run on every node.
const (
	ProxyNettrace          = "nettrace"
	ProxyKubeProxyIPTables = "kube-proxy-iptables"
	ProxyKubeProxyNFTables = "kube-proxy-nftables"
)

// Config is what `up` was asked for. It is saved in the state directory so
// that later commands see the same lab.
type Config struct {
	Nodes        int          `json:"nodes"`
	Underlay     netip.Prefix `json:"underlay"`
	PodPool      netip.Prefix `json:"podPool"`
	BlockSize    int          `json:"blockSize"`
	ServiceCIDR  netip.Prefix `json:"serviceCIDR"`
	ServiceProxy string       `json:"serviceProxy"`
	// Encapsulation between nodes: ipip, vxlan or none.
	Encapsulation string `json:"encapsulation"`
	// LoadBalancerPool is the range of underlay addresses given to
	// LoadBalancer services.
	LoadBalancerPool netip.Prefix `json:"loadBalancerPool"`

	// StateDir is where the lab keeps its files.
	StateDir string `json:"-"`
	// BinDir holds the project's binaries (bin/).
	BinDir string `json:"-"`
	// ControlPlaneDir holds the control-plane binaries.
	ControlPlaneDir string `json:"-"`
}

// DefaultConfig is the seed's cluster: three nodes on 192.168.10.0/24, pods
// from 172.16.0.0/16 in /24 blocks, services from 10.96.0.0/12.
func DefaultConfig() Config {
	return Config{
		Nodes:            3,
		Underlay:         netip.MustParsePrefix("192.168.10.0/24"),
		PodPool:          netip.MustParsePrefix("172.16.0.0/16"),
		BlockSize:        24,
		ServiceCIDR:      netip.MustParsePrefix("10.96.0.0/12"),
		ServiceProxy:     ProxyNettrace,
		Encapsulation:    "ipip",
		LoadBalancerPool: netip.MustParsePrefix("192.168.10.200/29"),
		StateDir:         DefaultStateDir,
	}
}

// Validate checks the configuration before anything is created.
func (c *Config) Validate() error {
	switch c.ServiceProxy {
	case ProxyNettrace, ProxyKubeProxyIPTables, ProxyKubeProxyNFTables:
	default:
		return fmt.Errorf("--service-proxy %q: want %s, %s or %s", c.ServiceProxy, ProxyNettrace, ProxyKubeProxyIPTables, ProxyKubeProxyNFTables)
	}
	switch c.Encapsulation {
	case "ipip", "vxlan", "none":
	default:
		return fmt.Errorf("--encapsulation %q: want ipip, vxlan or none", c.Encapsulation)
	}
	for name, p := range map[string]netip.Prefix{"--underlay": c.Underlay, "--pod-pool": c.PodPool, "--service-cidr": c.ServiceCIDR} {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("%s %s: want an IPv4 prefix (the lab is IPv4 only)", name, p)
		}
	}
	if c.BlockSize < c.PodPool.Bits() || c.BlockSize > 30 {
		return fmt.Errorf("block size /%d does not fit the pod pool %s", c.BlockSize, c.PodPool)
	}
	if c.PodPool.Overlaps(c.Underlay) || c.PodPool.Overlaps(c.ServiceCIDR) || c.ServiceCIDR.Overlaps(c.Underlay) {
		return fmt.Errorf("the underlay %s, pod pool %s and service CIDR %s must not overlap", c.Underlay, c.PodPool, c.ServiceCIDR)
	}
	if !c.Underlay.Contains(c.LoadBalancerPool.Addr()) {
		return fmt.Errorf("the load-balancer pool %s must be inside the underlay %s", c.LoadBalancerPool, c.Underlay)
	}
	return nil
}

func (c *Config) path() string { return filepath.Join(c.StateDir, "lab.json") }

// save records the configuration in the state directory.
func (c *Config) save() error {
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(c.path(), b, 0o644)
}

// ErrNotUp is returned when a command needs a lab and there is none.
var ErrNotUp = errors.New("the lab is not up: run `nettrace-lab up`")

// Load reads the configuration of the lab whose state is in stateDir.
func Load(stateDir string) (*Config, error) {
	c := &Config{StateDir: stateDir}
	b, err := os.ReadFile(c.path())
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotUp
	}
	if err != nil {
		return nil, fmt.Errorf("reading lab configuration: %w", err)
	}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", c.path(), err)
	}
	return c, nil
}

// Topology is the network this configuration lays out.
func (c *Config) Topology() (*Topology, error) { return NewTopology(c.Nodes, c.Underlay) }

// Kubeconfig is the admin kubeconfig for the host, written by Up.
func (c *Config) Kubeconfig() string { return filepath.Join(c.StateDir, "kubeconfig") }

// ControlPlaneStateDir holds the control plane's own files.
func (c *Config) ControlPlaneStateDir() string { return filepath.Join(c.StateDir, "controlplane") }

// NodeDir holds one node's files: kubeconfigs, CNI configuration, pods, logs.
func (c *Config) NodeDir(node string) string { return filepath.Join(c.StateDir, "nodes", node) }

// ExternalDir holds the outside world's logs and pid files.
func (c *Config) ExternalDir() string { return filepath.Join(c.StateDir, "external") }
