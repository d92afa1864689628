package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// The kubeconfigs of a node's processes, in the node's directory.
const (
	kubeletKubeconfig   = "kubelet.kubeconfig"
	nodeDaemonKubecfg   = "nettrace-node.kubeconfig"
	kubeProxyKubeconfig = "kube-proxy.kubeconfig"
	agentKubeconfig     = "nettrace-agent.kubeconfig"
)

// CNIConfDir is the node's /etc/cni/net.d.
func (c *Config) CNIConfDir(node string) string {
	return filepath.Join(c.NodeDir(node), "cni", "net.d")
}

// startNodes gives each node its credentials and CNI configuration, then
// starts its node runtime, its dataplane daemon and, when asked for, the
// real kube-proxy.
func (l *Lab) startNodes(ctx context.Context) error {
	for _, n := range l.topo.Nodes {
		if err := l.prepareNode(n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		if err := l.startNode(n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

func (l *Lab) prepareNode(n Node) error {
	dir := l.NodeDir(n.Name)
	if err := os.MkdirAll(l.CNIConfDir(n.Name), 0o755); err != nil {
		return err
	}
	cp := l.cp
	server := cp.URL()
	creds := []struct{ file, name, user, group string }{
		{kubeletKubeconfig, n.Name + "-kubelet", "system:node:" + n.Name, "system:nodes"},
		{nodeDaemonKubecfg, n.Name + "-nettrace-node", "nettrace-node", ""},
		{kubeProxyKubeconfig, n.Name + "-kube-proxy", "system:kube-proxy", ""},
		{agentKubeconfig, n.Name + "-nettrace-agent", "nettrace-agent", ""},
	}
	for _, c := range creds {
		var groups []string
		if c.group != "" {
			groups = []string{c.group}
		}
		if err := cp.IssueKubeconfig(filepath.Join(dir, c.file), server, c.name, c.user, groups...); err != nil {
			return err
		}
	}
	return l.writeCNIConfig(n)
}

// writeCNIConfig writes the node's conflist, as calico-node's install step
// writes 10-calico.conflist.
func (l *Lab) writeCNIConfig(n Node) error {
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "k8s-pod-network",
		"plugins": []any{map[string]any{
			"type":          "nettrace-cni",
			"kubeconfig":    filepath.Join(l.NodeDir(n.Name), nodeDaemonKubecfg),
			"nodename":      n.Name,
			"pool":          "default-ipv4-ippool",
			"encapsulation": l.Encapsulation,
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.CNIConfDir(n.Name), "10-nettrace.conflist"), b, 0o644)
}

func (l *Lab) startNode(n Node) error {
	dir := l.NodeDir(n.Name)
	logs := filepath.Join(dir, "log")
	if err := l.ensure(proc.Spec{
		Name: n.Name + "-kubelet", Netns: n.Netns(), Log: filepath.Join(logs, "kubelet.log"),
		Argv: []string{filepath.Join(l.BinDir, "nettrace-lab"), "kubelet", "--state-dir", l.StateDir, "--node", n.Name},
	}); err != nil {
		return err
	}
	// kubectl nettrace's agent, which a real cluster runs as a DaemonSet
	// (deploy/agent/daemonset.yaml).
	if err := l.ensure(proc.Spec{
		Name: n.Name + "-nettrace-agent", Netns: n.Netns(), Log: filepath.Join(logs, "nettrace-agent.log"),
		Argv: []string{filepath.Join(l.BinDir, "nettrace-agent"),
			"--node", n.Name,
			"--node-ip", n.IP.String(),
			"--kubeconfig", filepath.Join(dir, agentKubeconfig),
		},
	}); err != nil {
		return err
	}
	serviceNAT := l.ServiceProxy == ProxyNettrace
	if err := l.ensure(proc.Spec{
		Name: n.Name + "-nettrace-node", Netns: n.Netns(), Log: filepath.Join(logs, "nettrace-node.log"),
		Argv: []string{filepath.Join(l.BinDir, "nettrace-node"),
			"--kubeconfig", filepath.Join(dir, nodeDaemonKubecfg),
			"--node", n.Name,
			"--node-ip", n.IP.String(),
			"--cluster-cidr", l.PodPool.String(),
			"--lb-pool", l.LoadBalancerPool.String(),
			fmt.Sprintf("--service-nat=%t", serviceNAT),
		},
	}); err != nil {
		return err
	}
	if serviceNAT {
		return nil
	}
	mode := "iptables"
	if l.ServiceProxy == ProxyKubeProxyNFTables {
		mode = "nftables"
	}
	return l.ensure(proc.Spec{
		Name: n.Name + "-kube-proxy", Netns: n.Netns(), Log: filepath.Join(logs, "kube-proxy.log"),
		Argv: []string{filepath.Join(l.ControlPlaneDir, "kube-proxy"),
			"--kubeconfig", filepath.Join(dir, kubeProxyKubeconfig),
			"--hostname-override", n.Name,
			"--proxy-mode", mode,
			"--cluster-cidr", l.PodPool.String(),
			// A netns cannot raise the host's conntrack table size.
			"--conntrack-max-per-core=0",
			"--metrics-bind-address=127.0.0.1:10249",
			"--healthz-bind-address=127.0.0.1:10256",
			"--v=1",
		},
	})
}
