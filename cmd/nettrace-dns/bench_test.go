package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-nettrace/nettrace/internal/apitest"
)

// benchServices is how many Services the dnsperf comparison resolves.
const benchServices = 50

// BenchmarkVersusCoreDNS runs dnsperf against the nettrace-dns binary and
// against CoreDNS, on loopback, with the same API server, upstream and
// queries, and reports the QPS of each and their ratio. scripts/bench/dns.sh
// builds both binaries and names them in $NETTRACE_DNS and $NETTRACE_COREDNS.
func BenchmarkVersusCoreDNS(b *testing.B) {
	nettraceBin, corednsBin := os.Getenv("NETTRACE_DNS"), os.Getenv("NETTRACE_COREDNS")
	if nettraceBin == "" || corednsBin == "" {
		b.Fatal("$NETTRACE_DNS and $NETTRACE_COREDNS name the binaries to compare: run scripts/bench/dns.sh")
	}
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Fatal("dnsperf is not installed (apt-get install dnsperf)")
	}
	api := apitest.Get(b)
	createBenchServices(b, kubernetes.NewForConfigOrDie(api.Config))
	upstream := startUpstream(b)
	dir := b.TempDir()

	nettraceAddr := freeAddr(b)
	startProcess(b, nettraceBin, "--kubeconfig", api.Kubeconfig, "--listen", nettraceAddr,
		"--upstream", upstream, "--metrics-listen", "", "--health-listen", "")

	corednsAddr := freeAddr(b)
	corefile := filepath.Join(dir, "Corefile")
	writeFile(b, corefile, fmt.Sprintf(`.:%s {
    bind 127.0.0.1
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . %s {
        max_concurrent 1000
    }
    cache 30
}
`, port(corednsAddr), api.Kubeconfig, upstream))
	startProcess(b, corednsBin, "-conf", corefile)

	last := fmt.Sprintf("svc%d.bench.svc.cluster.local.", benchServices-1)
	for _, addr := range []string{nettraceAddr, corednsAddr} {
		waitFor(b, addr+" to answer "+last, func() bool {
			resp, _, err := new(dns.Client).Exchange(new(dns.Msg).SetQuestion(last, dns.TypeA), addr)
			return err == nil && len(resp.Answer) == 1
		})
	}

	for _, workload := range []struct{ name, format string }{
		{"cluster", "svc%d.bench.svc.cluster.local A\n"},
		{"forwarded", "host%d.example.org A\n"},
	} {
		var queries strings.Builder
		for i := range benchServices {
			fmt.Fprintf(&queries, workload.format, i)
		}
		file := filepath.Join(dir, workload.name+".txt")
		writeFile(b, file, queries.String())
		// Two alternating rounds each; the best of each server counts.
		var nettraceQPS, corednsQPS float64
		for range 2 {
			nettraceQPS = max(nettraceQPS, dnsperf(b, nettraceAddr, file))
			corednsQPS = max(corednsQPS, dnsperf(b, corednsAddr, file))
		}
		ratio := nettraceQPS / corednsQPS
		fmt.Printf("dnsperf %-9s nettrace-dns %8.0f qps   coredns %8.0f qps   ratio %.2f\n",
			workload.name, nettraceQPS, corednsQPS, ratio)
		b.ReportMetric(ratio, workload.name+"-ratio")
	}
}

func createBenchServices(b *testing.B, cs kubernetes.Interface) {
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for i := range benchServices {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "svc" + strconv.Itoa(i)},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		if _, err := cs.CoreV1().Services("bench").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// startProcess runs a server until the benchmark ends.
func startProcess(b *testing.B, bin string, args ...string) {
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", bin, err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if b.Failed() {
			b.Logf("%s:\n%s", bin, stderr.String())
		}
	})
}

var qpsLine = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)

// dnsperf runs dnsperf against addr for 5 seconds and returns its QPS.
func dnsperf(b *testing.B, addr, file string) float64 {
	out, err := exec.Command("dnsperf", "-s", "127.0.0.1", "-p", port(addr), "-d", file,
		"-l", "5", "-c", "4", "-T", "2", "-q", "200").CombinedOutput()
	if err != nil {
		b.Fatalf("dnsperf against %s: %v\n%s", addr, err, out)
	}
	m := qpsLine.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no QPS in dnsperf's output:\n%s", out)
	}
	qps, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		b.Fatal(err)
	}
	return qps
}

func port(addr string) string {
	_, p, _ := strings.Cut(addr, ":")
	return p
}

func writeFile(b *testing.B, path, content string) {
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		b.Fatal(err)
	}
}
