// Package controlplane runs a real Kubernetes control plane, built from
// source by scripts/controlplane: etcd, kube-apiserver (TLS, RBAC and the
// Node authorizer on), kube-controller-manager (node IPAM off: pod CIDRs come
// from the project's block IPAM) and kube-scheduler. The processes run inside
// one network namespace. The lab uses it for the k8s-m node; tests use it,
// without the controllers, for a throwaway API server.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubectl-nettrace/nettrace/lab/pki"
	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// Version is the Kubernetes version the control plane is built at.
const Version = "v1.37.2"

// Binaries lists the programs of the control plane.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"}

// Config describes a control plane.
type Config struct {
	// BinDir holds the binaries built by scripts/controlplane/build.sh.
	BinDir string
	// Dir holds the PKI, etcd's data, kubeconfigs, logs and pid files.
	Dir string
	// Netns is the named network namespace the processes run in.
	Netns string
	// AdvertiseIP is the API server's address; it must not be loopback.
	AdvertiseIP net.IP
	// ExtraServingIPs are further addresses the serving certificate covers,
	// such as a forwarded loopback address.
	ExtraServingIPs []net.IP
	// ServiceCIDR is the ClusterIP range, for example 10.96.0.0/12.
	ServiceCIDR string
	// ClusterCIDR is the pod pool, given to the controller manager.
	ClusterCIDR string
	// Detach lets the processes outlive the caller (the lab); when false they
	// die with it (tests).
	Detach bool
}

// Port is the API server's secure port.
const Port = 6443

// etcdPort and etcdPeerPort are etcd's ports on the netns loopback.
const (
	etcdPort     = 2379
	etcdPeerPort = 2380
)

// PKIDir holds the CA, certificates and keys.
func (c *Config) PKIDir() string { return filepath.Join(c.Dir, "pki") }

// RunDir holds the pid files.
func (c *Config) RunDir() string { return filepath.Join(c.Dir, "run") }

// LogDir holds one log file per process.
func (c *Config) LogDir() string { return filepath.Join(c.Dir, "log") }

func (c *Config) bin(name string) string { return filepath.Join(c.BinDir, name) }

// CheckBinaries reports a clear error when the named binaries (all of them
// when none is named) are not built.
func CheckBinaries(binDir string, names ...string) error {
	if len(names) == 0 {
		names = Binaries
	}
	for _, b := range names {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("control-plane binary %s is missing in %s: run `make controlplane` (a cold build takes about 7 minutes)", b, binDir)
		}
	}
	return nil
}

// ControlPlane is a started control plane.
type ControlPlane struct {
	cfg *Config
	CA  *pki.CA
	// AdminKubeconfig reaches the API server at AdvertiseIP as cluster-admin.
	AdminKubeconfig string
	admin           pki.Pair
}

// Start starts etcd and kube-apiserver, or finds them already running, and
// waits until the API server is ready.
func Start(ctx context.Context, cfg *Config) (*ControlPlane, error) {
	if err := CheckBinaries(cfg.BinDir, "etcd", "kube-apiserver"); err != nil {
		return nil, err
	}
	ca, err := pki.LoadOrCreateCA(cfg.PKIDir())
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{cfg: cfg, CA: ca}
	if cp.admin, err = ca.Issue(pki.Request{Name: "admin", CommonName: "kubernetes-admin", Organizations: []string{"system:masters"}}); err != nil {
		return nil, err
	}
	cp.AdminKubeconfig = filepath.Join(cfg.Dir, "admin.kubeconfig")
	if err := ca.WriteKubeconfig(cp.AdminKubeconfig, cp.URL(), "kubernetes-admin", cp.admin); err != nil {
		return nil, err
	}
	if err := cp.startEtcd(); err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(); err != nil {
		return nil, err
	}
	if err := cp.WaitReady(ctx, cp.URL()); err != nil {
		return nil, err
	}
	return cp, nil
}

// URL is the API server's address as seen from the underlay.
func (cp *ControlPlane) URL() string {
	return "https://" + net.JoinHostPort(cp.cfg.AdvertiseIP.String(), strconv.Itoa(Port))
}

func (cp *ControlPlane) spec(name string, argv ...string) proc.Spec {
	return proc.Spec{
		Name:   name,
		Netns:  cp.cfg.Netns,
		Argv:   argv,
		Log:    filepath.Join(cp.cfg.LogDir(), name+".log"),
		Detach: cp.cfg.Detach,
	}
}

func (cp *ControlPlane) ensure(s proc.Spec) error {
	if _, ok := proc.Running(cp.cfg.RunDir(), s.Name); ok {
		return nil
	}
	_, err := proc.Start(cp.cfg.RunDir(), s)
	return err
}

func (cp *ControlPlane) startEtcd() error {
	client := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	return cp.ensure(cp.spec("etcd", cp.cfg.bin("etcd"),
		"--name=default",
		"--data-dir="+filepath.Join(cp.cfg.Dir, "etcd"),
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=default="+peer,
		"--listen-metrics-urls=http://127.0.0.1:2381",
		"--quota-backend-bytes=2147483648",
		"--log-level=warn",
	))
}

func (cp *ControlPlane) startAPIServer() error {
	_, svcNet, err := net.ParseCIDR(cp.cfg.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("service CIDR %q: %w", cp.cfg.ServiceCIDR, err)
	}
	kubernetesIP := nextIP(svcNet.IP)
	ips := append([]net.IP{cp.cfg.AdvertiseIP, kubernetesIP, net.IPv4(127, 0, 0, 1)}, cp.cfg.ExtraServingIPs...)
	serving, err := cp.CA.Issue(pki.Request{
		Name: "apiserver", CommonName: "kube-apiserver", Server: true, IPs: ips,
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return err
	}
	saKey, err := cp.CA.ServiceAccountKey()
	if err != nil {
		return err
	}
	return cp.ensure(cp.spec("kube-apiserver", cp.cfg.bin("kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--advertise-address="+cp.cfg.AdvertiseIP.String(),
		"--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", Port),
		"--tls-cert-file="+serving.CertFile,
		"--tls-private-key-file="+serving.KeyFile,
		"--client-ca-file="+cp.CA.CertFile(),
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+cp.cfg.ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	))
}

// StartControllers starts kube-controller-manager and kube-scheduler.
func (cp *ControlPlane) StartControllers() error {
	kcm, err := cp.componentKubeconfig("kube-controller-manager", "system:kube-controller-manager")
	if err != nil {
		return err
	}
	sched, err := cp.componentKubeconfig("kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	saKey, err := cp.CA.ServiceAccountKey()
	if err != nil {
		return err
	}
	if err := cp.ensure(cp.spec("kube-controller-manager", cp.cfg.bin("kube-controller-manager"),
		"--kubeconfig="+kcm,
		"--authentication-kubeconfig="+kcm,
		"--authorization-kubeconfig="+kcm,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+saKey,
		"--root-ca-file="+cp.CA.CertFile(),
		"--cluster-signing-cert-file="+cp.CA.CertFile(),
		"--cluster-signing-key-file="+filepath.Join(cp.cfg.PKIDir(), "ca.key"),
		"--allocate-node-cidrs=false",
		"--cluster-cidr="+cp.cfg.ClusterCIDR,
		"--service-cluster-ip-range="+cp.cfg.ServiceCIDR,
		// Only what a pod network lab needs; cloud and storage controllers stay off.
		"--controllers=*,-node-ipam-controller,-persistentvolume-binder-controller,-persistentvolume-attach-detach-controller,-persistentvolume-expander-controller,-ephemeral-volume-controller,-persistentvolumeclaim-protection-controller,-persistentvolume-protection-controller",
		"--node-monitor-grace-period=20s",
		"--v=1",
	)); err != nil {
		return err
	}
	return cp.ensure(cp.spec("kube-scheduler", cp.cfg.bin("kube-scheduler"),
		"--kubeconfig="+sched,
		"--authentication-kubeconfig="+sched,
		"--authorization-kubeconfig="+sched,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--v=1",
	))
}

// componentKubeconfig issues a client certificate for user and writes a
// kubeconfig for it that reaches the API server on the netns loopback.
func (cp *ControlPlane) componentKubeconfig(name, user string) (string, error) {
	pair, err := cp.CA.Issue(pki.Request{Name: name, CommonName: user})
	if err != nil {
		return "", err
	}
	path := filepath.Join(cp.cfg.Dir, name+".kubeconfig")
	server := fmt.Sprintf("https://127.0.0.1:%d", Port)
	return path, cp.CA.WriteKubeconfig(path, server, user, pair)
}

// AdminPair is the cluster-admin client certificate.
func (cp *ControlPlane) AdminPair() pki.Pair { return cp.admin }

// IssueKubeconfig issues a client certificate for user in groups and writes a
// kubeconfig at path that reaches the API server at server.
func (cp *ControlPlane) IssueKubeconfig(path, server, name, user string, groups ...string) error {
	pair, err := cp.CA.Issue(pki.Request{Name: name, CommonName: user, Organizations: groups})
	if err != nil {
		return err
	}
	return cp.CA.WriteKubeconfig(path, server, user, pair)
}

// WaitReady polls url's /readyz with the admin certificate until it answers
// ok, ctx ends, or a control-plane process has died.
func (cp *ControlPlane) WaitReady(ctx context.Context, url string) error {
	client, err := cp.httpClient()
	if err != nil {
		return err
	}
	var last error
	for {
		for _, name := range []string{"etcd", "kube-apiserver"} {
			if _, ok := proc.Running(cp.cfg.RunDir(), name); !ok {
				return fmt.Errorf("%s exited; see %s", name, filepath.Join(cp.cfg.LogDir(), name+".log"))
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz: %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for kube-apiserver at %s: %w (last: %v)", url, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) httpClient() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(cp.admin.CertFile, cp.admin.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("loading admin certificate: %w", err)
	}
	caPEM, err := os.ReadFile(cp.CA.CertFile())
	if err != nil {
		return nil, fmt.Errorf("reading CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("CA file holds no certificate")
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}
	if cp.cfg.Netns != "" {
		// Dial from inside the control plane's netns: the advertise address
		// is only routed there, and must never be looked for elsewhere.
		nsPath := "/run/netns/" + cp.cfg.Netns
		transport.DialContext = func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: transport}, nil
}

// Stop stops every control-plane process, the controllers first.
func (cp *ControlPlane) Stop() error {
	return StopAll(cp.cfg.RunDir())
}

// StopAll stops the control-plane processes recorded in runDir.
func StopAll(runDir string) error {
	var errs []error
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		errs = append(errs, proc.Stop(runDir, name, 5*time.Second))
	}
	return errors.Join(errs...)
}

func nextIP(ip net.IP) net.IP {
	out := make(net.IP, len(ip.To4()))
	copy(out, ip.To4())
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}
