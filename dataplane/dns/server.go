// Package dns is the cluster DNS server of the reference dataplane, in the
// manner of CoreDNS with its kubernetes, forward and cache plugins. Names in
// the cluster domain, and PTRs of Service and headless endpoint addresses,
// are answered from client-go informer caches as the Kubernetes DNS-based
// service discovery specification says; every other question goes to
// health-checked upstream servers through a TTL-respecting cache. The
// server answers over UDP and TCP on one port and serves Prometheus
// metrics and /health and /ready over HTTP.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Config is what a Server is made of. Zero fields take the defaults named
// in their comments.
type Config struct {
	// Listen is the address of the DNS listeners, UDP and TCP on the same
	// port (":53"). With port 0 a free port is chosen.
	Listen string
	// ClusterDomain is the zone answered from the cluster ("cluster.local").
	ClusterDomain string
	// Upstreams are the servers, "ip" or "ip:port", that all other
	// questions are forwarded to. At least one is needed.
	Upstreams []string
	// TTL is the TTL, in seconds, of records in the cluster zone (30).
	TTL uint32
	// CacheTTLMax caps how long an upstream answer is cached (30s).
	CacheTTLMax time.Duration
	// CacheSize is how many upstream answers the cache holds (10000).
	CacheSize int
	// MaxConcurrent is how many forwarded questions may be in flight;
	// beyond it questions are REFUSED (1000).
	MaxConcurrent int
	// ForwardTimeout bounds the time one question spends with the
	// upstreams, all of them tried; then the answer is SERVFAIL (1.5s).
	ForwardTimeout time.Duration
	// HealthCheckInterval is how often each upstream is checked (500ms).
	HealthCheckInterval time.Duration
	// MetricsListen is the address of the Prometheus /metrics endpoint;
	// empty disables it.
	MetricsListen string
	// HealthListen is the address of /health and /ready; empty disables it.
	HealthListen string
	// Logger receives the server's log lines (slog.Default()).
	Logger *slog.Logger
}

// Server is a running cluster DNS server: its sockets are bound by
// NewServer and served by Run.
type Server struct {
	cluster   *Cluster
	handler   *handler
	udp       net.PacketConn
	tcp       net.Listener
	metricsLn net.Listener
	healthLn  net.Listener
	log       *slog.Logger
}

// NewServer checks cfg, prepares the informers on client and binds the
// server's sockets. Run serves them; until then nothing is listed.
func NewServer(cfg Config, client kubernetes.Interface) (*Server, error) {
	cfg = withDefaults(cfg)
	if _, ok := dns.IsDomainName(cfg.ClusterDomain); !ok || cfg.ClusterDomain == "." {
		return nil, fmt.Errorf("cluster domain %q is not a domain name", cfg.ClusterDomain)
	}
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("no upstream servers")
	}
	upstreams := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		addr, err := upstreamAddr(u)
		if err != nil {
			return nil, err
		}
		upstreams = append(upstreams, addr)
	}
	cluster, err := NewCluster(client, cfg.Logger)
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	s := &Server{
		cluster: cluster,
		handler: &handler{
			zone:      &zone{origin: dns.Fqdn(strings.ToLower(cfg.ClusterDomain)), ttl: cfg.TTL, cluster: cluster},
			cache:     newAnswerCache(cfg.CacheTTLMax, cfg.CacheSize),
			forwarder: newForwarder(upstreams, cfg.ForwardTimeout, cfg.HealthCheckInterval, cfg.MaxConcurrent, m, cfg.Logger),
			metrics:   m,
			log:       cfg.Logger,
		},
		log: cfg.Logger,
	}
	if s.udp, s.tcp, err = listenDNS(cfg.Listen); err != nil {
		return nil, err
	}
	if cfg.MetricsListen != "" {
		if s.metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("listening for metrics on %s: %w", cfg.MetricsListen, err)
		}
	}
	if cfg.HealthListen != "" {
		if s.healthLn, err = net.Listen("tcp", cfg.HealthListen); err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("listening for health checks on %s: %w", cfg.HealthListen, err)
		}
	}
	return s, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Listen == "" {
		cfg.Listen = ":53"
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.TTL == 0 {
		cfg.TTL = 30
	}
	if cfg.CacheTTLMax == 0 {
		cfg.CacheTTLMax = 30 * time.Second
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = 10000
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = 1000
	}
	if cfg.ForwardTimeout == 0 {
		cfg.ForwardTimeout = 1500 * time.Millisecond
	}
	if cfg.HealthCheckInterval == 0 {
		cfg.HealthCheckInterval = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// upstreamAddr turns "ip" or "ip:port" into "ip:port", port 53 by default.
func upstreamAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("upstream %q: want an IP address, with or without a port", s)
	}
	return netip.AddrPortFrom(addr, 53).String(), nil
}

// listenDNS binds UDP and TCP on the same port of addr. With port 0 it
// retries until it finds a port free for both.
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("DNS listen address %q: %w", addr, err)
	}
	for attempt := 0; ; attempt++ {
		udp, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listening on udp %s: %w", addr, err)
		}
		bound := net.JoinHostPort(host, fmt.Sprint(udp.LocalAddr().(*net.UDPAddr).Port))
		tcp, err := net.Listen("tcp", bound)
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if port != "0" || attempt == 10 {
			return nil, nil, fmt.Errorf("listening on tcp %s: %w", bound, err)
		}
	}
}

// Addr is the address the DNS listeners are bound to, UDP and TCP alike.
func (s *Server) Addr() string {
	return s.tcp.Addr().String()
}

// MetricsAddr is the address of the /metrics endpoint, "" when disabled.
func (s *Server) MetricsAddr() string {
	if s.metricsLn == nil {
		return ""
	}
	return s.metricsLn.Addr().String()
}

// HealthAddr is the address of /health and /ready, "" when disabled.
func (s *Server) HealthAddr() string {
	if s.healthLn == nil {
		return ""
	}
	return s.healthLn.Addr().String()
}

// Run lists and watches the cluster, checks the upstreams and serves DNS,
// metrics and health until ctx is done or a listener fails. It closes the
// listeners before it returns.
func (s *Server) Run(ctx context.Context) error {
	defer s.closeListeners()
	g, ctx := errgroup.WithContext(ctx)
	s.cluster.Start(ctx.Done())
	defer s.cluster.Shutdown()
	s.handler.forwarder.healthCheck(ctx)

	serveDNS(ctx, g, &dns.Server{PacketConn: s.udp, Handler: s.handler, UDPSize: dns.DefaultMsgSize})
	serveDNS(ctx, g, &dns.Server{Listener: s.tcp, Handler: s.handler})
	if s.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.handler.metrics.registry, promhttp.HandlerOpts{}))
		serveHTTP(ctx, g, s.metricsLn, mux)
	}
	if s.healthLn != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, "OK")
		})
		mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
			if !s.cluster.HasSynced() {
				http.Error(w, "informers not synced", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "OK")
		})
		serveHTTP(ctx, g, s.healthLn, mux)
	}
	s.log.Info("serving DNS", "addr", s.Addr(), "zone", s.handler.zone.origin)
	g.Go(func() error {
		if cache.WaitForCacheSync(ctx.Done(), s.cluster.HasSynced) {
			s.log.Info("cluster listed: answering the zone")
		}
		return nil
	})
	return g.Wait()
}

// shutdownTimeout bounds how long Run waits for answers in progress.
const shutdownTimeout = 5 * time.Second

// serveDNS runs srv in g until ctx is done.
func serveDNS(ctx context.Context, g *errgroup.Group, srv *dns.Server) {
	started, stopped := make(chan struct{}), make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	g.Go(func() error {
		defer close(stopped)
		if err := srv.ActivateAndServe(); err != nil {
			return fmt.Errorf("serving DNS: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-started:
		case <-stopped:
			return nil
		}
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		return srv.ShutdownContext(shutdown)
	})
}

// serveHTTP serves handler on ln in g until ctx is done.
func serveHTTP(ctx context.Context, g *errgroup.Group, ln net.Listener, handler http.Handler) {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving HTTP on %s: %w", ln.Addr(), err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		return srv.Shutdown(shutdown)
	})
}

func (s *Server) closeListeners() {
	for _, c := range []interface{ Close() error }{s.udp, s.tcp, s.metricsLn, s.healthLn} {
		if c != nil {
			c.Close()
		}
	}
}
