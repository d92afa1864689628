// Package images holds the programs that stand in for container images in
// the lab. Each behaves like the real image on the wire: nginx serves its
// welcome page on :80, traefik/whoami echoes the request with the host's
// name and addresses, and the upstream DNS server answers for the lab's
// outside world.
package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// nginxPage is the body of nginx's default index.html.
const nginxPage = `<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
`

// Nginx serves nginx's welcome page on addr until ctx ends.
func Nginx(ctx context.Context, addr string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Server", "nginx")
		if r.URL.Path != "/" && r.URL.Path != "/index.html" {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, nginxPage)
	})
	return serveHTTP(ctx, addr, mux)
}

// Whoami answers every request as traefik/whoami does: the hostname, every
// address of the host, the client's address, then the request itself.
func Whoami(ctx context.Context, addr, name string) error {
	return serveHTTP(ctx, addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, whoamiText(r, name))
	}))
}

func whoamiText(r *http.Request, name string) string {
	var b strings.Builder
	if name != "" {
		fmt.Fprintf(&b, "Name: %s\n", name)
	}
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Hostname: %s\n", host)
	if ifaces, err := net.Interfaces(); err == nil {
		for _, iface := range ifaces {
			addrs, _ := iface.Addrs()
			for _, a := range addrs {
				if ipnet, ok := a.(*net.IPNet); ok {
					fmt.Fprintf(&b, "IP: %s\n", ipnet.IP)
				}
			}
		}
	}
	fmt.Fprintf(&b, "RemoteAddr: %s\n", r.RemoteAddr)
	fmt.Fprintf(&b, "%s %s %s\n", r.Method, r.URL.RequestURI(), r.Proto)
	fmt.Fprintf(&b, "Host: %s\n", r.Host)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// UpstreamRecords are the names the lab's outside world resolves; they all
// point at its web server. Any other name is NXDOMAIN.
var UpstreamRecords = []string{"google.com.", "www.google.com.", "example.com.", "www.example.com."}

// UpstreamDNS is the outside world's DNS server, the upstream that the
// cluster DNS forwards to. It answers A queries for UpstreamRecords with
// webIP, on UDP and TCP.
func UpstreamDNS(ctx context.Context, addr string, webIP net.IP) error {
	known := map[string]bool{}
	for _, n := range UpstreamRecords {
		known[n] = true
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			_ = w.WriteMsg(m)
			return
		}
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		switch {
		case !known[name]:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A:   webIP,
			})
		}
		_ = w.WriteMsg(m)
	})
	errc := make(chan error, 2)
	servers := []*dns.Server{
		{Addr: addr, Net: "udp", Handler: handler},
		{Addr: addr, Net: "tcp", Handler: handler},
	}
	for _, s := range servers {
		go func() { errc <- s.ListenAndServe() }()
	}
	select {
	case <-ctx.Done():
		for _, s := range servers {
			_ = s.Shutdown()
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("upstream DNS on %s: %w", addr, err)
	}
}
