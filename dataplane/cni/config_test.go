package cni

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
)

// codeOf is the CNI error code of err, or 0 when err is not a CNI error.
func codeOf(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestLoadConfDefaults(t *testing.T) {
	conf, err := loadConf([]byte(`{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"nettrace-cni","kubeconfig":"/etc/cni/net.d/nettrace.kubeconfig"}`))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if conf.Pool != "default-ipv4-ippool" || conf.Encapsulation != ipam.IPIP || conf.MTU != 0 || conf.NodeName != strings.ToLower(host) {
		t.Fatalf("defaults: pool %q, encapsulation %q, mtu %d, nodename %q", conf.Pool, conf.Encapsulation, conf.MTU, conf.NodeName)
	}
}

func TestLoadConfRejects(t *testing.T) {
	const base = `"cniVersion":"1.1.0","name":"n","type":"nettrace-cni"`
	tests := []struct {
		conf string
		code uint
		msg  string
	}{
		{`{` + base + `,"kubeconfig":"/k","nodname":"typo"}`, types.ErrUnsupportedField, `unsupported field "nodname": "typo"`},
		{`{` + base + `,"kubeconfig":"/k","mtu":"1500"}`, types.ErrInvalidNetworkConfig, `field "mtu" is a JSON string, want a number`},
		{`{` + base + `,"kubeconfig":"/k","pool":26}`, types.ErrInvalidNetworkConfig, `field "pool" is a JSON number, want a string`},
		{`{` + base + `,"kubeconfig":["/k"]}`, types.ErrInvalidNetworkConfig, `field "kubeconfig" is a JSON array, want a string`},
		{`{` + base + `}`, types.ErrInvalidNetworkConfig, `field "kubeconfig" is required`},
		{`{` + base + `,"kubeconfig":"/k","encapsulation":"gre"}`, types.ErrInvalidNetworkConfig, `field "encapsulation" is "gre"`},
		{`{` + base + `,"kubeconfig":"/k","mtu":40}`, types.ErrInvalidNetworkConfig, `field "mtu" is 40`},
		{`{` + base + `,"kubeconfig":"/k","mtu":70000}`, types.ErrInvalidNetworkConfig, `field "mtu" is 70000`},
		{`{` + base + `,`, types.ErrDecodingFailure, `decoding the network configuration`},
	}
	for _, tt := range tests {
		_, err := loadConf([]byte(tt.conf))
		if codeOf(err) != tt.code || err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("loadConf(%s) = %v (code %d), want code %d with %q", tt.conf, err, codeOf(err), tt.code, tt.msg)
		}
	}
}

func TestLoadConfAcceptsTheSpecFields(t *testing.T) {
	conf, err := loadConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"nettrace-cni","kubeconfig":"/k",
		"nodename":"k8s-w1","pool":"172.16.0.0/16","encapsulation":"vxlan","mtu":1400,
		"capabilities":{"portMappings":true},"runtimeConfig":{},"args":{},"dns":{},"ipam":{},
		"prevResult":{"cniVersion":"1.1.0"},
		"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
		"cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	keep, ok := conf.validAttachments()
	if !ok || !keep["a"] || !keep["b"] || len(keep) != 2 {
		t.Fatalf("valid attachments = %v, %v; want a and b", keep, ok)
	}
	if conf.NodeName != "k8s-w1" || conf.Pool != "172.16.0.0/16" || conf.Encapsulation != ipam.VXLAN || conf.MTU != 1400 {
		t.Fatalf("conf = %+v", conf)
	}
	conf, err = loadConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"nettrace-cni","kubeconfig":"/k"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := conf.validAttachments(); ok {
		t.Fatal("a configuration without cni.dev/valid-attachments has a list of valid attachments")
	}
}

func TestEncapOverhead(t *testing.T) {
	for e, want := range map[ipam.Encapsulation]int{ipam.IPIP: 20, ipam.VXLAN: 50, ipam.NoEncap: 0} {
		if got := encapOverhead(e); got != want {
			t.Errorf("encapOverhead(%s) = %d, want %d", e, got, want)
		}
	}
}

func TestLoadPodArgs(t *testing.T) {
	p, err := loadPodArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u")
	if err != nil || p.Namespace != "default" || p.Name != "web-0" {
		t.Fatalf("loadPodArgs = %+v, %v", p, err)
	}
	for _, bad := range []string{"", "IgnoreUnknown=1;K8S_POD_NAME=web-0", "K8S_POD_NAMESPACE=default;garbage"} {
		if _, err := loadPodArgs(bad); codeOf(err) != types.ErrInvalidEnvironmentVariables {
			t.Errorf("loadPodArgs(%q) = %v, want code 4", bad, err)
		}
	}
}

func TestHostVethName(t *testing.T) {
	// sha1("default.web-0") starts with 0d7763386da.
	if got := hostVethName("default", "web-0"); got != "cali0d7763386da" {
		t.Fatalf("hostVethName = %q, want cali0d7763386da", got)
	}
	if len(hostVethName("a-very-long-namespace", "a-very-long-pod-name")) != 15 {
		t.Fatal("host veth names must be 15 characters")
	}
}

func TestCNIErrorCodes(t *testing.T) {
	tests := []struct {
		err  error
		code uint
	}{
		{fmt.Errorf("finding pool: %w", ipam.ErrPoolNotFound), types.ErrInvalidNetworkConfig},
		{fmt.Errorf("pool: %w", ipam.ErrInvalidPool), types.ErrInvalidNetworkConfig},
		{fmt.Errorf("assigning: %w", ipam.ErrPoolExhausted), types.ErrTryAgainLater},
		{fmt.Errorf("listing: %w", &net.OpError{Op: "dial", Err: errors.New("connection refused")}), types.ErrTryAgainLater},
		{types.NewError(types.ErrInvalidNetNS, "bad netns", ""), types.ErrInvalidNetNS},
		{errors.New("something else"), types.ErrInternal},
	}
	for _, tt := range tests {
		if got := codeOf(cniError(tt.err)); got != tt.code {
			t.Errorf("cniError(%v) has code %d, want %d", tt.err, got, tt.code)
		}
	}
	if cniError(nil) != nil {
		t.Error("cniError(nil) is not nil")
	}
}

// timeoutError is a network error that timed out, as a TLS handshake
// timeout is.
type timeoutError struct{}

func (timeoutError) Error() string   { return "net/http: TLS handshake timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func TestTimedOut(t *testing.T) {
	refused := &net.OpError{Op: "dial", Err: errors.New("connection refused")}
	if !timedOut(fmt.Errorf("listing IPPools: %w", timeoutError{})) {
		t.Error("a TLS handshake timeout is not taken for a timeout")
	}
	if timedOut(fmt.Errorf("listing IPPools: %w", refused)) {
		t.Error("a refused connection is taken for a timeout")
	}
	if codeOf(cniError(timeoutError{})) != types.ErrTryAgainLater {
		t.Error("a timeout does not map to code 11")
	}
}
