package servicenat

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// The chains kube-proxy's iptables mode owns outright: they are declared (and
// so flushed) and refilled on every sync.
const (
	chainServices         = "KUBE-SERVICES"
	chainExternalServices = "KUBE-EXTERNAL-SERVICES"
	chainNodePorts        = "KUBE-NODEPORTS"
	chainPostrouting      = "KUBE-POSTROUTING"
	chainMarkMasq         = "KUBE-MARK-MASQ"
	chainForward          = "KUBE-FORWARD"
	chainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	// chainKubeletFirewall is kubelet's anti-martian chain; kube-proxy
	// writes the same rule into it when localhost NodePorts are enabled.
	chainKubeletFirewall = "KUBE-FIREWALL"
)

// The prefixes of the per-service and per-endpoint nat chains. A nat chain
// with one of these prefixes that the current rules do not use is stale and is
// deleted; every other chain is left alone.
const (
	prefixClusterPolicy = "KUBE-SVC-"
	prefixLocalPolicy   = "KUBE-SVL-"
	prefixExternal      = "KUBE-EXT-"
	prefixFirewall      = "KUBE-FW-"
	prefixEndpoint      = "KUBE-SEP-"
)

// portProtoHash is kube-proxy's chain-name hash: the first 16 characters of
// the base32 form of sha256(servicePortName + protocol). iptables limits
// chain names to 28 characters.
func portProtoHash(servicePortName, protocol string) string {
	return chainHash(servicePortName + protocol)
}

// chainHash returns the first 16 characters of base32(sha256(s)), which
// are those of the first 10 bytes of the hash.
func chainHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	var encoded [16]byte
	base32.StdEncoding.Encode(encoded[:], sum[:10])
	return string(encoded[:])
}

// ServiceChain returns the KUBE-SVC- chain of a service port: the chain that
// spreads traffic over all the cluster's endpoints. servicePortName is
// "namespace/name:port" ("namespace/name" for an unnamed port) and protocol
// is lower case ("tcp").
func ServiceChain(servicePortName, protocol string) string {
	return prefixClusterPolicy + portProtoHash(servicePortName, protocol)
}

// LocalServiceChain returns the KUBE-SVL- chain of a service port: the chain
// that spreads traffic over this node's endpoints only, used by the Local
// traffic policies.
func LocalServiceChain(servicePortName, protocol string) string {
	return prefixLocalPolicy + portProtoHash(servicePortName, protocol)
}

// ExternalChain returns the KUBE-EXT- chain of a service port, which NodePort,
// LoadBalancer and external-IP traffic enters.
func ExternalChain(servicePortName, protocol string) string {
	return prefixExternal + portProtoHash(servicePortName, protocol)
}

// FirewallChain returns the KUBE-FW- chain of a service port, which applies
// loadBalancerSourceRanges.
func FirewallChain(servicePortName, protocol string) string {
	return prefixFirewall + portProtoHash(servicePortName, protocol)
}

// EndpointChain returns the KUBE-SEP- chain of one endpoint ("ip:port") of a
// service port: the chain holding its DNAT.
func EndpointChain(servicePortName, protocol, endpoint string) string {
	return prefixEndpoint + chainHash(servicePortName+protocol+endpoint)
}

// isServiceChain tells whether a nat chain is one of the per-service or
// per-endpoint chains that this package creates and deletes.
func isServiceChain(chain string) bool {
	for _, prefix := range []string{prefixClusterPolicy, prefixLocalPolicy, prefixExternal, prefixFirewall, prefixEndpoint} {
		if strings.HasPrefix(chain, prefix) {
			return true
		}
	}
	return false
}
