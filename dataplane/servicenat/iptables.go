package servicenat

import "github.com/kubectl-nettrace/nettrace/dataplane/iptables"

// Backend is an iptables implementation: the legacy xtables kernel API or
// nf_tables (see package iptables).
type Backend = iptables.Backend

// The backends, and BackendAuto to detect the node's.
const (
	BackendAuto   = iptables.BackendAuto
	BackendLegacy = iptables.BackendLegacy
	BackendNFT    = iptables.BackendNFT
)

// DetectBackend finds the backend the node in a netns uses (see
// iptables.DetectBackend).
var DetectBackend = iptables.DetectBackend

// ctNew matches the first packet of a connection.
var ctNew = []string{"-m", "conntrack", "--ctstate", "NEW"}

// serviceJumps are kube-proxy's jumps from the built-in chains, in the order
// it ensures them; each is inserted at the top of its chain. The last two
// send input and output through kubelet's KUBE-FIREWALL, which holds the
// anti-martian rule of localhost NodePorts: kube-proxy ensures them, and the
// chain, whether or not it writes that rule.
var serviceJumps = []iptables.Jump{
	{Table: "filter", From: "INPUT", To: chainExternalServices, Match: ctNew, Comment: "kubernetes externally-visible service portals"},
	{Table: "filter", From: "FORWARD", To: chainExternalServices, Match: ctNew, Comment: "kubernetes externally-visible service portals"},
	{Table: "filter", From: "INPUT", To: chainNodePorts, Comment: "kubernetes health check service ports"},
	{Table: "filter", From: "FORWARD", To: chainServices, Match: ctNew, Comment: "kubernetes service portals"},
	{Table: "filter", From: "OUTPUT", To: chainServices, Match: ctNew, Comment: "kubernetes service portals"},
	{Table: "filter", From: "FORWARD", To: chainForward, Comment: "kubernetes forwarding rules"},
	{Table: "filter", From: "INPUT", To: chainProxyFirewall, Match: ctNew, Comment: "kubernetes load balancer firewall"},
	{Table: "filter", From: "OUTPUT", To: chainProxyFirewall, Match: ctNew, Comment: "kubernetes load balancer firewall"},
	{Table: "filter", From: "FORWARD", To: chainProxyFirewall, Match: ctNew, Comment: "kubernetes load balancer firewall"},
	{Table: "nat", From: "OUTPUT", To: chainServices, Comment: "kubernetes service portals"},
	{Table: "nat", From: "PREROUTING", To: chainServices, Comment: "kubernetes service portals"},
	{Table: "nat", From: "POSTROUTING", To: chainPostrouting, Comment: "kubernetes postrouting rules"},
	{Table: "filter", From: "INPUT", To: chainKubeletFirewall},
	{Table: "filter", From: "OUTPUT", To: chainKubeletFirewall},
}
