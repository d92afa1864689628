package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/deploy"
	"github.com/kubectl-nettrace/nettrace/lab/controlplane"
	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// ProjectBinaries are the project's programs the lab runs; `make build` puts
// them in bin/.
var ProjectBinaries = []string{"nettrace-lab", "nettrace-cni", "nettrace-node", "nettrace-dns", "nettrace-agent"}

// Lab is a lab being brought up or used.
type Lab struct {
	Config
	topo *Topology
	cp   *controlplane.ControlPlane
	out  io.Writer
}

// Up brings the lab up, or completes a lab that is partly up: every step
// keeps what already exists. It returns when every node is Ready.
func Up(ctx context.Context, cfg Config, out io.Writer) (*Lab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if prev, err := Load(cfg.StateDir); err == nil {
		if prev.Nodes != cfg.Nodes || prev.Underlay != cfg.Underlay || prev.PodPool != cfg.PodPool ||
			prev.ServiceProxy != cfg.ServiceProxy || prev.Encapsulation != cfg.Encapsulation {
			return nil, fmt.Errorf("a lab with other settings is up (%d nodes, service proxy %s, encapsulation %s): run `nettrace-lab down` first",
				prev.Nodes, prev.ServiceProxy, prev.Encapsulation)
		}
	}
	if err := checkBinaries(cfg); err != nil {
		return nil, err
	}
	topo, err := cfg.Topology()
	if err != nil {
		return nil, err
	}
	l := &Lab{Config: cfg, topo: topo, out: out}
	if err := cfg.save(); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		run  func(context.Context) error
	}{
		{"network namespaces and the underlay", func(context.Context) error { return topo.Create() }},
		{"outside world (upstream DNS, web server)", l.startExternal},
		{"control plane (etcd, kube-apiserver, controller-manager, scheduler)", l.startControlPlane},
		{"cluster objects (CRDs, RBAC, IP pool, DNS)", l.applyClusterObjects},
		{"node runtimes and dataplane daemons", l.startNodes},
		{"nodes Ready", l.waitNodesReady},
		{"control-plane role on " + topo.Master().Name, l.markControlPlane},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.run(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.what, err)
		}
		fmt.Fprintf(out, "✓ %s (%.1fs)\n", s.what, time.Since(start).Seconds())
	}
	return l, nil
}

func checkBinaries(cfg Config) error {
	if err := controlplane.CheckBinaries(cfg.ControlPlaneDir); err != nil {
		return err
	}
	for _, b := range ProjectBinaries {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return fmt.Errorf("%s is missing in %s: run `make build`", b, cfg.BinDir)
		}
	}
	return nil
}

func (l *Lab) runDir() string { return filepath.Join(l.StateDir, "run") }

// ensure starts s unless a process recorded under its name is alive.
func (l *Lab) ensure(s proc.Spec) error {
	s.Detach = true
	if _, ok := proc.Running(l.runDir(), s.Name); ok {
		return nil
	}
	_, err := proc.Start(l.runDir(), s)
	return err
}

// startExternal runs the outside world's servers: the upstream DNS server
// that the cluster DNS forwards to, and the web server its names point at.
func (l *Lab) startExternal(context.Context) error {
	logs := filepath.Join(l.ExternalDir(), "log")
	lab := filepath.Join(l.BinDir, "nettrace-lab")
	if err := l.ensure(proc.Spec{
		Name: "external-dns", Netns: ExternalNetns, Log: filepath.Join(logs, "upstream-dns.log"),
		Argv: []string{lab, "image", "upstream-dns", "--listen", net.JoinHostPort(UpstreamDNSIP.String(), "53"), "--answer", ExternalWebIP.String()},
	}); err != nil {
		return err
	}
	return l.ensure(proc.Spec{
		Name: "external-web", Netns: ExternalNetns, Log: filepath.Join(logs, "web.log"),
		Argv: []string{lab, "image", "nginx", "--listen", net.JoinHostPort(ExternalWebIP.String(), "80")},
	})
}

func (l *Lab) controlPlaneConfig() *controlplane.Config {
	return &controlplane.Config{
		BinDir:      l.ControlPlaneDir,
		Dir:         l.ControlPlaneStateDir(),
		Netns:       l.topo.Master().Netns(),
		AdvertiseIP: l.topo.Master().IP.AsSlice(),
		ServiceCIDR: l.ServiceCIDR.String(),
		ClusterCIDR: l.PodPool.String(),
		Detach:      true,
	}
}

func (l *Lab) startControlPlane(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cp, err := controlplane.Start(ctx, l.controlPlaneConfig())
	if err != nil {
		return err
	}
	l.cp = cp
	if err := cp.StartControllers(); err != nil {
		return err
	}
	return cp.CA.WriteKubeconfig(l.Kubeconfig(), cp.URL(), "kubernetes-admin", cp.AdminPair())
}

// Clients returns clients for the lab's API server, as cluster-admin.
func (l *Lab) Clients() (kubernetes.Interface, dynamic.Interface, error) {
	return clients(l.Kubeconfig())
}

func clients(kubeconfig string) (kubernetes.Interface, dynamic.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return cs, dyn, nil
}

// Kubectl runs the lab's kubectl with the admin kubeconfig.
func (c *Config) Kubectl(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.ControlPlaneDir, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	return cmd.Run()
}

// applyClusterObjects applies the CRDs, waits until they are served, then
// applies the lab's objects and the IP pool.
func (l *Lab) applyClusterObjects(ctx context.Context) error {
	if err := l.applyEmbedded(ctx, "crds"); err != nil {
		return err
	}
	var stderr bytes.Buffer
	if err := l.Kubectl(ctx, nil, io.Discard, &stderr, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
		return fmt.Errorf("waiting for the CRDs: %w: %s", err, stderr.String())
	}
	if err := l.applyEmbedded(ctx, "lab", "agent/rbac.yaml"); err != nil {
		return err
	}
	return l.ensureIPPool(ctx)
}

// applyEmbedded applies manifests of deploy/: every file of a folder, or
// one file.
func (l *Lab) applyEmbedded(ctx context.Context, paths ...string) error {
	var names []string
	for _, p := range paths {
		if strings.HasSuffix(p, ".yaml") {
			names = append(names, p)
			continue
		}
		entries, err := fs.ReadDir(deploy.Files, p)
		if err != nil {
			return err
		}
		var inDir []string
		for _, e := range entries {
			inDir = append(inDir, p+"/"+e.Name())
		}
		sort.Strings(inDir)
		names = append(names, inDir...)
	}
	var all bytes.Buffer
	for _, n := range names {
		b, err := deploy.Files.ReadFile(n)
		if err != nil {
			return err
		}
		all.WriteString("---\n")
		all.Write(b)
		all.WriteString("\n")
	}
	var stderr bytes.Buffer
	if err := l.Kubectl(ctx, &all, io.Discard, &stderr, "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		return fmt.Errorf("applying deploy/%s: %w: %s", strings.Join(paths, ", deploy/"), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

var ipPoolResource = schema.GroupVersionResource{Group: "nettrace.dev", Version: "v1alpha1", Resource: "ippools"}

// ensureIPPool creates the pod pool the configuration asks for.
func (l *Lab) ensureIPPool(ctx context.Context) error {
	_, dyn, err := l.Clients()
	if err != nil {
		return err
	}
	pool := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "nettrace.dev/v1alpha1",
		"kind":       "IPPool",
		"metadata":   map[string]any{"name": "default-ipv4-ippool"},
		"spec": map[string]any{
			"cidr":          l.PodPool.String(),
			"blockSize":     int64(l.BlockSize),
			"encapsulation": l.Encapsulation,
		},
	}}
	_, err = dyn.Resource(ipPoolResource).Create(ctx, pool, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the IP pool: %w", err)
	}
	return nil
}

// markControlPlane labels the master node with the control-plane role.
func (l *Lab) markControlPlane(ctx context.Context) error {
	cs, _, err := l.Clients()
	if err != nil {
		return err
	}
	patch := []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)
	if _, err := cs.CoreV1().Nodes().Patch(ctx, l.topo.Master().Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labelling %s: %w", l.topo.Master().Name, err)
	}
	return nil
}

// waitNodesReady waits until every node reports Ready.
func (l *Lab) waitNodesReady(ctx context.Context) error {
	cs, _, err := l.Clients()
	if err != nil {
		return err
	}
	return l.poll(ctx, 60*time.Second, "every node Ready", func(ctx context.Context) (bool, string) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		return ready == len(l.topo.Nodes), fmt.Sprintf("%d of %d nodes Ready", ready, len(l.topo.Nodes))
	})
}
