package images

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestWhoamiAnswersLikeTraefikWhoami(t *testing.T) {
	req := httptest.NewRequest(http.MethodGet, "http://10.96.143.238/", nil)
	req.RemoteAddr = "172.16.116.0:38223"
	req.Header.Set("User-Agent", "curl/7.68.0")
	text := whoamiText(req, "")
	host, _ := os.Hostname()
	for _, want := range []string{"Hostname: " + host + "\n", "IP: 127.0.0.1\n", "RemoteAddr: 172.16.116.0:38223\n", "GET / HTTP/1.1\n", "Host: 10.96.143.238\n", "User-Agent: curl/7.68.0\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("whoami output lacks %q:\n%s", want, text)
		}
	}
	if !strings.HasPrefix(whoamiText(req, "demo"), "Name: demo\n") {
		t.Error("WHOAMI_NAME is not printed first")
	}
}

func TestNginxServesTheWelcomePage(t *testing.T) {
	addr := freeAddr(t, "tcp")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = Nginx(ctx, addr) }()
	var resp *http.Response
	var err error
	for range 50 {
		if resp, err = http.Get("http://" + addr + "/"); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "<title>Welcome to nginx!</title>") || resp.Header.Get("Server") != "nginx" {
		t.Errorf("GET /: %s %q", resp.Header.Get("Server"), body)
	}
	resp, err = http.Get("http://" + addr + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /missing: %s", resp.Status)
	}
}

func TestUpstreamDNSAnswersItsNamesOnly(t *testing.T) {
	addr := freeAddr(t, "udp")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = UpstreamDNS(ctx, addr, net.ParseIP("203.0.113.100")) }()
	query := func(name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		var in *dns.Msg
		var err error
		for range 50 {
			if in, err = dns.Exchange(m, addr); err == nil {
				return in
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal(err)
		return nil
	}
	in := query("google.com.")
	if len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "203.0.113.100" {
		t.Errorf("google.com: %v", in.Answer)
	}
	if in := query("unknown.example.org."); in.Rcode != dns.RcodeNameError {
		t.Errorf("unknown.example.org: rcode %s", dns.RcodeToString[in.Rcode])
	}
}

// freeAddr is a loopback address with a port that is free now.
func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
