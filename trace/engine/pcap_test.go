package engine

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
)

// TestPcap writes the pcapng file of a probe to the ClusterIP and reads it
// with the real tshark: each packet is on an interface named node/iface
// (node/label/iface inside the client's namespace) and is commented with
// its hop, and with its direction when it is on the path.
func TestPcap(t *testing.T) {
	c := enginetest.NewCluster(t, "legacy")
	var pcap bytes.Buffer
	req := request(c, tcpFlow(enginetest.ClientIP, enginetest.ServiceAddr), Probe, 5*time.Second)
	req.Pcap = &pcap
	path, err := Trace(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "trace.pcapng")
	if err := os.WriteFile(file, pcap.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	port := strconv.Itoa(int(path.Flow.SrcPort))
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		lines = append(lines, strings.ReplaceAll(l, ":"+port+" ", ":PORT "))
	}
	want := []string{
		// Both ends of each pod's veth capture what they receive: the
		// client's ARP request and SYN on its host veth, the answers in
		// its namespace.
		"k8s-w1/calia1b2c3d4e5f\trequest: arp request who-has 169.254.1.1 tell 172.16.1.10",
		"k8s-w1/pod 172.16.1.10/eth0\trequest: arp reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)",
		"k8s-w1/calia1b2c3d4e5f\trequest: tcp 172.16.1.10:PORT > 10.96.0.100:80 S ttl 64 len 60",
		"k8s-w1/pod 172.16.1.11/eth0\trequest: arp request who-has 172.16.1.11 tell 192.168.10.101",
		"k8s-w1/cali0f1e2d3c4b5\trequest: arp reply 172.16.1.11 is-at 0a:58:ac:10:01:0b",
		"k8s-w1/pod 172.16.1.11/eth0\trequest: tcp 172.16.1.10:PORT > 172.16.1.11:80 S ttl 63 len 60",
		"k8s-w1/cali0f1e2d3c4b5\treply: arp request who-has 169.254.1.1 tell 172.16.1.11",
		"k8s-w1/pod 172.16.1.11/eth0\treply: arp reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy ARP)",
		"k8s-w1/cali0f1e2d3c4b5\treply: tcp 172.16.1.11:80 > 172.16.1.10:PORT S. ttl 64 len 60",
		"k8s-w1/pod 172.16.1.10/eth0\treply: tcp 10.96.0.100:80 > 172.16.1.10:PORT S. ttl 63 len 60",
		// The handshake's last ACK is not on the path: no direction.
		"k8s-w1/calia1b2c3d4e5f\ttcp 172.16.1.10:PORT > 10.96.0.100:80 . ttl 64 len 52",
	}
	if len(lines) < len(want) || !slices.Equal(lines[:len(want)], want) {
		t.Errorf("tshark reads:\n%s\nwant it to start with:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
