// Package apitest gives tests a real Kubernetes API server: etcd and
// kube-apiserver, built by `make controlplane`, running in a throwaway network
// namespace. Clients reach it through a loopback forwarder, opened in the
// test's network namespace or in any other one the test names.
//
// A package that uses it calls Run from TestMain; its tests share one server.
package apitest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-nettrace/nettrace/lab/controlplane"
	"github.com/kubectl-nettrace/nettrace/lab/proc"
)

// Server is a running API server.
type Server struct {
	// Config reaches the server as cluster-admin from the test's netns.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file equal to Config.
	Kubeconfig string

	cp        *controlplane.ControlPlane
	dir       string
	netnsName string
	apiAddr   string
	mu        sync.Mutex
	listeners []net.Listener
}

// netnsPrefix names the netns of a test server, followed by the test's pid.
const netnsPrefix = "nt-apitest-"

var (
	shared   *Server
	startErr error
	once     sync.Once
)

// Run runs the package's tests and stops the shared server afterwards.
// Call it from TestMain: os.Exit(apitest.Run(m)).
func Run(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	return code
}

// Get returns the package's API server, starting it on first use. It fails
// the test when the control plane is not built or does not start.
func Get(tb testing.TB) *Server {
	tb.Helper()
	once.Do(func() { shared, startErr = start() })
	if startErr != nil {
		tb.Fatalf("starting the test API server: %v", startErr)
	}
	return shared
}

// BinDir is where the control-plane binaries are looked for:
// $NETTRACE_CONTROLPLANE_DIR, or .cache/controlplane at the repository root.
func BinDir() string {
	if d := os.Getenv("NETTRACE_CONTROLPLANE_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", ".cache", "controlplane")
}

// start boots the server from a goroutine locked to an OS thread that
// lives as long as the test process: the control plane dies with the thread
// that started it (a parent-death signal is per thread), and tests switch
// threads into other netns and throw them away.
func start() (*Server, error) {
	type result struct {
		s   *Server
		err error
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread()
		s, err := boot()
		done <- result{s, err}
		select {} // keep the thread
	}()
	r := <-done
	return r.s, r.err
}

func boot() (*Server, error) {
	removeStale()
	dir, err := os.MkdirTemp("", "nettrace-apitest-")
	if err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	s := &Server{dir: dir, netnsName: netnsPrefix + strconv.Itoa(os.Getpid())}
	if err := s.startControlPlane(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// advertiseIP is the API server's address inside its own netns. Every
// server has a netns of its own, so they may all use the same one.
var advertiseIP = net.IPv4(10, 255, 0, 1)

func (s *Server) startControlPlane() error {
	if err := controlplane.CheckBinaries(BinDir(), "etcd", "kube-apiserver"); err != nil {
		return err
	}
	if err := run("ip", "netns", "add", s.netnsName); err != nil {
		return err
	}
	if err := run("ip", "-n", s.netnsName, "link", "set", "lo", "up"); err != nil {
		return err
	}
	// The address the API server advertises lives on the netns loopback
	// device: this kernel has no dummy interfaces.
	if err := run("ip", "-n", s.netnsName, "addr", "add", advertiseIP.String()+"/32", "dev", "lo"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cp, err := controlplane.Start(ctx, &controlplane.Config{
		BinDir:      BinDir(),
		Dir:         s.dir,
		Netns:       s.netnsName,
		AdvertiseIP: advertiseIP,
		ServiceCIDR: "10.96.0.0/12",
		ClusterCIDR: "172.16.0.0/16",
	})
	s.cp = cp
	if err != nil {
		return err
	}
	s.apiAddr = net.JoinHostPort(advertiseIP.String(), strconv.Itoa(controlplane.Port))
	host, err := s.forward("")
	if err != nil {
		return err
	}
	s.Kubeconfig = filepath.Join(s.dir, "test.kubeconfig")
	if err := s.writeKubeconfig(s.Kubeconfig, host); err != nil {
		return err
	}
	s.Config, err = clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return fmt.Errorf("loading test kubeconfig: %w", err)
	}
	return nil
}

// KubeconfigIn returns the path of a kubeconfig that reaches the server from
// inside the network namespace at nsPath, through a forwarder listening on
// that namespace's loopback. The forwarder lives as long as the server.
func (s *Server) KubeconfigIn(tb testing.TB, nsPath string) string {
	tb.Helper()
	host, err := s.forward(nsPath)
	if err != nil {
		tb.Fatalf("forwarding the API server into %s: %v", nsPath, err)
	}
	f, err := os.CreateTemp(s.dir, "netns-*.kubeconfig")
	if err != nil {
		tb.Fatal(err)
	}
	f.Close()
	if err := s.writeKubeconfig(f.Name(), host); err != nil {
		tb.Fatal(err)
	}
	return f.Name()
}

func (s *Server) writeKubeconfig(path, hostPort string) error {
	return s.cp.CA.WriteKubeconfig(path, "https://"+hostPort, "kubernetes-admin", s.cp.AdminPair())
}

// forward listens on 127.0.0.1 in the netns at nsPath ("" for the caller's)
// and relays each connection to the API server, dialled inside its netns.
func (s *Server) forward(nsPath string) (string, error) {
	var ln net.Listener
	listen := func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}
	var err error
	if nsPath == "" {
		err = listen(nil)
	} else {
		err = ns.WithNetNSPath(nsPath, listen)
	}
	if err != nil {
		return "", fmt.Errorf("listening for the API forwarder: %w", err)
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	go s.relay(ln)
	return ln.Addr().String(), nil
}

func (s *Server) relay(ln net.Listener) {
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer client.Close()
			var upstream net.Conn
			err := ns.WithNetNSPath("/run/netns/"+s.netnsName, func(ns.NetNS) error {
				var err error
				upstream, err = net.DialTimeout("tcp", s.apiAddr, 5*time.Second)
				return err
			})
			if err != nil {
				return
			}
			defer upstream.Close()
			go func() { _, _ = io.Copy(upstream, client); upstream.Close() }()
			_, _ = io.Copy(client, upstream)
		}()
	}
}

func (s *Server) stop() {
	s.mu.Lock()
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	_ = controlplane.StopAll(filepath.Join(s.dir, "run"))
	_ = run("ip", "netns", "del", s.netnsName)
	_ = os.RemoveAll(s.dir)
}

// removeStale deletes the netns of test servers whose process is gone, as
// after a SIGKILL; their control-plane processes died with it.
func removeStale() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		pid, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(pid); err == nil && !proc.Alive(n) {
			_ = run("ip", "netns", "del", e.Name())
		}
	}
}

func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %w: %s", argv, err, out)
	}
	return nil
}
