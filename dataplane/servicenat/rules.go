package servicenat

import (
	"bytes"
	"cmp"
	"fmt"
	"hash/maphash"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// DefaultMasqueradeMark is kube-proxy's default masquerade mark (bit 14).
const DefaultMasqueradeMark = 0x4000

// largeClusterEndpoints is kube-proxy's threshold: above this many endpoints
// the per-endpoint rules lose their comments to keep the ruleset small.
const largeClusterEndpoints = 1000

// Config is what the rules depend on besides the API objects: the node and
// the kube-proxy options this dataplane supports.
type Config struct {
	// NodeName decides which endpoints are local (endpoint.nodeName).
	NodeName string
	// NodeIPs are the node's addresses; the IPv4 ones are used for
	// NodePortsOnNodeIPs and to let the node through loadBalancerSourceRanges.
	NodeIPs []netip.Addr
	// ClusterCIDR is the pod CIDR. When valid, traffic to a ClusterIP from
	// outside it is masqueraded and pod traffic to an external address of an
	// externalTrafficPolicy Local service short-circuits to the cluster chain,
	// as kube-proxy's --cluster-cidr does.
	ClusterCIDR netip.Prefix
	// MasqueradeMark is the single-bit fwmark that asks for SNAT; zero means
	// DefaultMasqueradeMark.
	MasqueradeMark uint32
	// MasqueradeAll masquerades all traffic to a ClusterIP.
	MasqueradeAll bool
	// LocalhostNodePorts makes NodePorts answer on 127.0.0.0/8 (kube-proxy's
	// default, which needs net.ipv4.conf.all.route_localnet=1) and adds
	// kubelet's anti-martian rule to KUBE-FIREWALL. As in kube-proxy, it is
	// ignored when NodePortsOnNodeIPs leaves out every loopback address.
	LocalhostNodePorts bool
	// NodePortsOnNodeIPs limits NodePorts to NodeIPs instead of every local
	// address (kube-proxy's --nodeport-addresses=primary).
	NodePortsOnNodeIPs bool
	// ConntrackTCPLiberal tells that net.netfilter.nf_conntrack_tcp_be_liberal
	// is set, in which case INVALID packets are not dropped in KUBE-FORWARD.
	ConntrackTCPLiberal bool
	// CountInvalidDrops and CountLocalhostNodePorts tell that the nfacct
	// counters CounterInvalidDropped and CounterLocalhostNodePorts exist.
	// As in kube-proxy, the INVALID drop then counts into the first, and
	// with localhost NodePorts each NodePort gets a first rule for
	// 127.0.0.0/8 that counts into the second.
	CountInvalidDrops       bool
	CountLocalhostNodePorts bool
}

// localhostNodePorts tells whether NodePorts answer on 127.0.0.0/8: when
// asked for and the NodePort addresses include a loopback one.
func (c *Config) localhostNodePorts() bool {
	if !c.LocalhostNodePorts {
		return false
	}
	return !c.NodePortsOnNodeIPs || slices.ContainsFunc(c.NodeIPs, func(ip netip.Addr) bool { return ip.Is4() && ip.IsLoopback() })
}

// Ruleset is the complete set of rules for one Snapshot, split the way a
// partial sync needs it: the top-level chains, rewritten when their rules
// change, and each Service's own KUBE-SVC/SVL/EXT/FW/SEP chains, rewritten
// only when they change.
type Ruleset struct {
	cfg          Config // what the rules are for, as Rebuild must check
	largeCluster bool
	filter       []byte // the whole *filter section
	natTop       []byte // rules of the top-level nat chains
	filterHash   uint64
	natTopHash   uint64
	services     []*serviceRules // those with ports, by namespace and name
	byName       map[types.NamespacedName]*serviceRules
	notes        []string
}

// serviceRules is what one Service adds to the rules: its own nat chains
// and their rules, its rules in the shared chains and its notes. Rebuild
// reuses it while the Service and its EndpointSlices are unchanged; it is
// never modified once built.
type serviceRules struct {
	name types.NamespacedName
	// inputs are the resource versions of the Service and its
	// EndpointSlices, empty when one is unknown (never reused then).
	inputs    string
	endpoints int // counted for kube-proxy's large-cluster threshold
	hasPorts  bool

	chains []string // own chains, in order
	rules  []byte   // their rules
	hash   uint64   // of chains and rules

	// Rules in the shared chains: filter, nat KUBE-SERVICES, nat
	// KUBE-NODEPORTS.
	filterRules, servicesRules, nodePortRules []byte
	notes                                     []string
}

// hashSeed fingerprints rules within this process; fingerprints are never
// stored elsewhere.
var hashSeed = maphash.MakeSeed()

// Notes returns what Build left out or found odd, one sentence each, sorted:
// headless, ExternalName and IPv6 Services, invalid ports, ports without
// endpoints.
func (r *Ruleset) Notes() []string { return r.notes }

// Build computes the rules kube-proxy's iptables mode would program on the
// node described by cfg for the API state snap. It is a pure function.
func Build(snap Snapshot, cfg Config) *Ruleset { return Rebuild(nil, snap, cfg) }

// Rebuild is Build, reusing from prev (nil: nothing) the rules of every
// Service whose object and EndpointSlices have the resource versions they
// had when prev was built for the same Config. Its result is Build's; only
// the work is less when few Services changed, as in a partial sync.
func Rebuild(prev *Ruleset, snap Snapshot, cfg Config) *Ruleset {
	if prev != nil && !prev.cfg.equal(cfg) {
		prev = nil
	}
	slicesOf, orphans := groupSlices(snap.EndpointSlices)
	// Digest the Services that changed, reuse the others.
	units := make(map[types.NamespacedName]*serviceRules, len(snap.Services))
	digests := make(map[types.NamespacedName]*model)
	total := 0
	for _, svc := range snap.Services {
		nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		if old := units[nn]; old != nil {
			total -= old.endpoints // a duplicate: the last one counts
		}
		inputs := inputsOf(svc, slicesOf[nn])
		if old := prev.reusable(nn, inputs); old != nil {
			units[nn] = old
			delete(digests, nn)
			total += old.endpoints
			continue
		}
		m := Snapshot{Services: []*v1.Service{svc}, EndpointSlices: slicesOf[nn]}.digest(cfg.NodeName)
		u := &serviceRules{name: nn, inputs: inputs, notes: m.notes}
		for _, sp := range m.services[nn] {
			u.hasPorts = true
			u.endpoints += len(m.endpoints[sp.key])
		}
		units[nn], digests[nn] = u, m
		total += u.endpoints
	}
	largeCluster := total > largeClusterEndpoints
	if prev != nil && largeCluster != prev.largeCluster {
		// Every endpoint rule changes: nothing can be reused.
		return Rebuild(nil, snap, cfg)
	}

	b := newBuilder(cfg, largeCluster)
	names := slices.SortedFunc(maps.Keys(units), func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	r := &Ruleset{cfg: cfg.clone(), largeCluster: largeCluster, byName: units}
	var notes []string
	if len(orphans) > 0 {
		// Only their notes: they belong to no proxied Service.
		notes = append(notes, Snapshot{EndpointSlices: orphans}.digest(cfg.NodeName).notes...)
	}
	var filterRules, servicesRules, nodePortRules bytes.Buffer
	for _, nn := range names {
		u := units[nn]
		if m := digests[nn]; m != nil {
			b.writeService(u, m)
		}
		notes = append(notes, u.notes...)
		if !u.hasPorts {
			continue
		}
		r.services = append(r.services, u)
		filterRules.Write(u.filterRules)
		servicesRules.Write(u.servicesRules)
		nodePortRules.Write(u.nodePortRules)
	}
	r.filter = b.filterSection(filterRules.Bytes())
	r.natTop = b.natTopRules(servicesRules.Bytes(), nodePortRules.Bytes())
	r.filterHash, r.natTopHash = hashBytes(r.filter), hashBytes(r.natTop)
	slices.Sort(notes)
	r.notes = slices.Compact(notes)
	return r
}

// reusable returns prev's rules of the Service nn if they were built from
// the same inputs, else nil.
func (prev *Ruleset) reusable(nn types.NamespacedName, inputs string) *serviceRules {
	if prev == nil || inputs == "" {
		return nil
	}
	if old := prev.byName[nn]; old != nil && old.inputs == inputs {
		return old
	}
	return nil
}

// groupSlices sorts EndpointSlices by the Service their label names; those
// without the label are orphans.
func groupSlices(endpointSlices []*discovery.EndpointSlice) (map[types.NamespacedName][]*discovery.EndpointSlice, []*discovery.EndpointSlice) {
	byService := make(map[types.NamespacedName][]*discovery.EndpointSlice, len(endpointSlices))
	var orphans []*discovery.EndpointSlice
	for _, slice := range endpointSlices {
		name := slice.Labels[discovery.LabelServiceName]
		if name == "" {
			orphans = append(orphans, slice)
			continue
		}
		nn := types.NamespacedName{Namespace: slice.Namespace, Name: name}
		byService[nn] = append(byService[nn], slice)
	}
	return byService, orphans
}

// inputsOf identifies the API objects a Service's rules are built from by
// their resource versions, "" when one has none (objects not from the API).
func inputsOf(svc *v1.Service, endpointSlices []*discovery.EndpointSlice) string {
	if svc.ResourceVersion == "" {
		return ""
	}
	ids := make([]string, 0, 1+len(endpointSlices))
	ids = append(ids, string(svc.UID)+"@"+svc.ResourceVersion)
	for _, slice := range endpointSlices {
		if slice.ResourceVersion == "" {
			return ""
		}
		ids = append(ids, slice.Name+"@"+slice.ResourceVersion)
	}
	slices.Sort(ids[1:])
	return strings.Join(ids, " ")
}

// equal tells whether two Configs give the same rules.
func (c *Config) equal(o Config) bool { return reflect.DeepEqual(*c, o) }

// clone returns a copy of c that shares nothing with it.
func (c *Config) clone() Config {
	d := *c
	d.NodeIPs = slices.Clone(c.NodeIPs)
	return d
}

func hashBytes(data ...[]byte) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for _, d := range data {
		h.Write(d)
	}
	return h.Sum64()
}

// builder writes the rules of one Service after another.
type builder struct {
	cfg                Config
	mark               string
	clusterCIDR        string // empty: local traffic cannot be told apart
	largeCluster       bool
	localhostNodePorts bool

	// The current Service's rules: in its own chains, then in the shared
	// chains.
	own           bytes.Buffer
	filterRules   bytes.Buffer // filter rules
	servicesRules bytes.Buffer // nat KUBE-SERVICES rules
	nodePortRules bytes.Buffer // nat KUBE-NODEPORTS rules
	notes         []string
	args          []string // scratch
}

func newBuilder(cfg Config, largeCluster bool) *builder {
	mark := cfg.MasqueradeMark
	if mark == 0 {
		mark = DefaultMasqueradeMark
	}
	b := &builder{
		cfg:                cfg,
		mark:               fmt.Sprintf("%#08x", mark),
		largeCluster:       largeCluster,
		localhostNodePorts: cfg.localhostNodePorts(),
	}
	if cfg.ClusterCIDR.IsValid() {
		b.clusterCIDR = cfg.ClusterCIDR.Masked().String()
	}
	return b
}

// writeService fills u with the rules of the Service digested in m.
func (b *builder) writeService(u *serviceRules, m *model) {
	b.own.Reset()
	b.filterRules.Reset()
	b.servicesRules.Reset()
	b.nodePortRules.Reset()
	b.notes = b.notes[:0]
	for _, sp := range m.services[u.name] {
		u.chains = b.writeServicePort(&b.own, u.chains, sp, m.endpoints[sp.key])
	}
	u.rules = bytes.Clone(b.own.Bytes())
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for _, c := range u.chains {
		h.WriteString(c)
		h.WriteByte('\n')
	}
	h.Write(u.rules)
	u.hash = h.Sum64()
	u.filterRules = bytes.Clone(b.filterRules.Bytes())
	u.servicesRules = bytes.Clone(b.servicesRules.Bytes())
	u.nodePortRules = bytes.Clone(b.nodePortRules.Bytes())
	u.notes = append(u.notes, b.notes...)
}

// writeLine writes one iptables-restore line: the words separated by spaces.
func writeLine(buf *bytes.Buffer, words ...string) {
	for i, w := range words {
		if i > 0 {
			buf.WriteByte(' ')
		}
		buf.WriteString(w)
	}
	buf.WriteByte('\n')
}

func chainLine(buf *bytes.Buffer, chain string) {
	buf.WriteString(":")
	buf.WriteString(chain)
	buf.WriteString(" - [0:0]\n")
}

// quote wraps a comment that has spaces, as kube-proxy writes it.
func quote(s string) string { return `"` + s + `"` }

// probabilities holds 1/n formatted as kube-proxy does, for the usual n.
var probabilities = func() []string {
	p := make([]string, 1001)
	for n := 1; n < len(p); n++ {
		p[n] = formatProbability(n)
	}
	return p
}()

// probability formats 1/n as kube-proxy does.
func probability(n int) string {
	if n < len(probabilities) {
		return probabilities[n]
	}
	return formatProbability(n)
}

func formatProbability(n int) string { return strconv.FormatFloat(1/float64(n), 'f', 10, 64) }

// writeServicePort writes the rules of one service port: its captures in
// the shared chains and its own chains into own, whose names it appends to
// chains. The order follows kube-proxy's syncProxyRules.
func (b *builder) writeServicePort(own *bytes.Buffer, chains []string, sp *servicePort, eps []*endpoint) []string {
	cluster, local, reachable, hasEndpoints := categorize(eps, sp)
	usesClusterChain := len(cluster) > 0 && sp.usesClusterEndpoints()
	usesLocalChain := len(local) > 0 && sp.usesLocalEndpoints()

	internalChain, hasInternalEndpoints := sp.clusterChain, hasEndpoints
	if sp.internalPolicyLocal {
		internalChain = sp.localChain
		hasInternalEndpoints = hasEndpoints && len(local) > 0
	}
	externalPolicyChain, hasExternalEndpoints := sp.clusterChain, hasEndpoints
	if sp.externalPolicyLocal {
		externalPolicyChain = sp.localChain
		hasExternalEndpoints = hasEndpoints && len(local) > 0
	}
	usesExternalChain := hasEndpoints && sp.externallyAccessible()
	usesFirewallChain := hasEndpoints && len(sp.loadBalancerIPs) > 0 && len(sp.sourceRanges) > 0
	loadBalancerChain := sp.externalChain
	if usesFirewallChain {
		loadBalancerChain = sp.firewallChain
	}

	var internalFilter, internalFilterComment, externalFilter, externalFilterComment string
	if !hasEndpoints {
		internalFilter, externalFilter = "REJECT", "REJECT"
		internalFilterComment = quote(sp.name + " has no endpoints")
		externalFilterComment = internalFilterComment
		b.note("service port %s has no ready endpoints: its traffic is rejected", sp.name)
	} else {
		if !hasInternalEndpoints {
			internalFilter, internalFilterComment = "DROP", quote(sp.name+" has no local endpoints")
			b.note("service port %s has internalTrafficPolicy Local and no endpoint on this node: its ClusterIP traffic is dropped", sp.name)
		}
		if !hasExternalEndpoints {
			externalFilter, externalFilterComment = "DROP", quote(sp.name+" has no local endpoints")
			b.note("service port %s has externalTrafficPolicy Local and no endpoint on this node: its external traffic is dropped", sp.name)
		}
	}
	proto := sp.protocol
	port := strconv.Itoa(sp.port)
	clusterIP := sp.clusterIP.String()

	// Captures of the ClusterIP, external IPs and load-balancer IPs.
	if hasInternalEndpoints {
		writeLine(&b.servicesRules, "-A", chainServices, "-m", "comment", "--comment", quote(sp.name+" cluster IP"),
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port, "-j", internalChain)
	} else {
		writeLine(&b.filterRules, filterJump(internalFilter, "-A", chainServices, "-m", "comment", "--comment", internalFilterComment,
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port)...)
	}
	for _, ip := range sp.externalIPs {
		if hasEndpoints {
			writeLine(&b.servicesRules, "-A", chainServices, "-m", "comment", "--comment", quote(sp.name+" external IP"),
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", sp.externalChain)
		}
		if !hasExternalEndpoints {
			writeLine(&b.filterRules, filterJump(externalFilter, "-A", chainExternalServices, "-m", "comment", "--comment", externalFilterComment,
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port)...)
		}
	}
	for _, ip := range sp.loadBalancerIPs {
		if hasEndpoints {
			writeLine(&b.servicesRules, "-A", chainServices, "-m", "comment", "--comment", quote(sp.name+" loadbalancer IP"),
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", loadBalancerChain)
		}
		if usesFirewallChain {
			writeLine(&b.filterRules, "-A", chainProxyFirewall, "-m", "comment", "--comment",
				quote(sp.name+" traffic not accepted by "+sp.firewallChain),
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", "DROP")
		}
	}
	if !hasExternalEndpoints {
		for _, ip := range sp.loadBalancerIPs {
			writeLine(&b.filterRules, filterJump(externalFilter, "-A", chainExternalServices, "-m", "comment", "--comment", externalFilterComment,
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port)...)
		}
	}

	// NodePort and health-check captures.
	if sp.nodePort != 0 {
		nodePort := strconv.Itoa(sp.nodePort)
		if hasEndpoints {
			if b.localhostNodePorts && b.cfg.CountLocalhostNodePorts {
				writeLine(&b.nodePortRules, "-A", chainNodePorts, "-m", "comment", "--comment", sp.name,
					"-m", proto, "-p", proto, "-d", "127.0.0.0/8", "--dport", nodePort,
					"-m", "nfacct", "--nfacct-name", CounterLocalhostNodePorts, "-j", sp.externalChain)
			}
			writeLine(&b.nodePortRules, "-A", chainNodePorts, "-m", "comment", "--comment", sp.name,
				"-m", proto, "-p", proto, "--dport", nodePort, "-j", sp.externalChain)
		}
		if !hasExternalEndpoints {
			writeLine(&b.filterRules, filterJump(externalFilter, "-A", chainExternalServices, "-m", "comment", "--comment", externalFilterComment,
				"-m", "addrtype", "--dst-type", "LOCAL", "-m", proto, "-p", proto, "--dport", nodePort)...)
		}
	}
	if sp.healthCheckNodePort != 0 {
		writeLine(&b.filterRules, "-A", chainNodePorts, "-m", "comment", "--comment", quote(sp.name+" health check node port"),
			"-m", "tcp", "-p", "tcp", "--dport", strconv.Itoa(sp.healthCheckNodePort), "-j", "ACCEPT")
	}

	// The service's own chains, from here on.
	if hasInternalEndpoints {
		match := []string{"-A", internalChain, "-m", "comment", "--comment", quote(sp.name + " cluster IP"),
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port}
		switch {
		case b.cfg.MasqueradeAll:
			writeLine(own, append(match, "-j", chainMarkMasq)...)
		case b.clusterCIDR != "":
			// Off-cluster traffic to a ClusterIP may be routed back out
			// through another node: masquerade it.
			writeLine(own, append(match, "!", "-s", b.clusterCIDR, "-j", chainMarkMasq)...)
		}
	}

	if usesExternalChain {
		chains = append(chains, sp.externalChain)
		if !sp.externalPolicyLocal {
			writeLine(own, "-A", sp.externalChain, "-m", "comment", "--comment",
				quote("masquerade traffic for "+sp.name+" external destinations"), "-j", chainMarkMasq)
		} else {
			if b.clusterCIDR != "" {
				// Pod traffic to an external address is not subject to the
				// traffic policy, as if it had gone out to the load
				// balancer and come back.
				writeLine(own, "-A", sp.externalChain, "-m", "comment", "--comment",
					quote("pod traffic for "+sp.name+" external destinations"),
					"-s", b.clusterCIDR, "-j", sp.clusterChain)
			}
			writeLine(own, "-A", sp.externalChain, "-m", "comment", "--comment",
				quote("masquerade LOCAL traffic for "+sp.name+" external destinations"),
				"-m", "addrtype", "--src-type", "LOCAL", "-j", chainMarkMasq)
			writeLine(own, "-A", sp.externalChain, "-m", "comment", "--comment",
				quote("route LOCAL traffic for "+sp.name+" external destinations"),
				"-m", "addrtype", "--src-type", "LOCAL", "-j", sp.clusterChain)
		}
		if hasExternalEndpoints {
			writeLine(own, "-A", sp.externalChain, "-j", externalPolicyChain)
		}
	}

	if usesFirewallChain {
		chains = append(chains, sp.firewallChain)
		comment := quote(sp.name + " loadbalancer IP")
		allowFromNode := false
		for _, r := range sp.sourceRanges {
			writeLine(own, "-A", sp.firewallChain, "-m", "comment", "--comment", comment,
				"-s", r.String(), "-j", sp.externalChain)
			for _, ip := range b.cfg.NodeIPs {
				allowFromNode = allowFromNode || r.Contains(ip)
			}
		}
		if allowFromNode {
			// A node reaching a VIP it holds locally comes from the VIP.
			for _, ip := range sp.loadBalancerIPs {
				writeLine(own, "-A", sp.firewallChain, "-m", "comment", "--comment", comment,
					"-s", ip.String(), "-j", sp.externalChain)
			}
		}
		// Whatever reaches the end is not DNATed, and KUBE-PROXY-FIREWALL
		// drops it in the filter table.
		writeLine(own, "-A", sp.firewallChain, "-m", "comment", "--comment",
			quote("other traffic to "+sp.name+" will be dropped by KUBE-PROXY-FIREWALL"))
	}

	if usesClusterChain {
		chains = append(chains, sp.clusterChain)
		b.writeBalancing(own, sp, sp.clusterChain, cluster)
	}
	if usesLocalChain {
		chains = append(chains, sp.localChain)
		b.writeBalancing(own, sp, sp.localChain, local)
	}

	for _, ep := range reachable {
		chains = append(chains, ep.chain)
		args := append(b.args[:0], "-A", ep.chain)
		args = b.appendComment(args, sp.name)
		// Hairpin: an endpoint reaching itself through the service must
		// be masqueraded or it would answer itself directly.
		writeLine(own, append(args, "-s", ep.ip, "-j", chainMarkMasq)...)
		if sp.clientIPAffinity {
			args = append(args, "-m", "recent", "--name", ep.chain, "--set")
		}
		writeLine(own, append(args, "-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", ep.hostPort)...)
		b.args = args
	}
	return chains
}

// writeBalancing writes the jumps from a KUBE-SVC or KUBE-SVL chain to the
// endpoint chains: first the session-affinity checks, then one rule per
// endpoint with probability 1/n, 1/(n-1), ... and a last rule that always
// matches.
func (b *builder) writeBalancing(own *bytes.Buffer, sp *servicePort, chain string, eps []*endpoint) {
	if sp.clientIPAffinity {
		for _, ep := range eps {
			args := append(b.args[:0], "-A", chain)
			args = b.appendComment(args, quote(sp.name+" -> "+ep.hostPort))
			writeLine(own, append(args, "-m", "recent", "--name", ep.chain,
				"--rcheck", "--seconds", strconv.Itoa(sp.stickySeconds), "--reap", "-j", ep.chain)...)
			b.args = args
		}
	}
	for i, ep := range eps {
		args := append(b.args[:0], "-A", chain)
		args = b.appendComment(args, quote(sp.name+" -> "+ep.hostPort))
		if i < len(eps)-1 {
			args = append(args, "-m", "statistic", "--mode", "random", "--probability", probability(len(eps)-i))
		}
		writeLine(own, append(args, "-j", ep.chain)...)
		b.args = args
	}
}

// appendComment adds a comment to a per-endpoint rule, except in a large
// cluster where kube-proxy drops them.
func (b *builder) appendComment(args []string, comment string) []string {
	if b.largeCluster {
		return args
	}
	return append(args, "-m", "comment", "--comment", comment)
}

// filterJump ends a filter rule with its target. REJECT is spelled with the
// ICMP type iptables-save shows for it, the default one.
func filterJump(target string, match ...string) []string {
	if target == "REJECT" {
		return append(match, "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
	}
	return append(match, "-j", target)
}

func (b *builder) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

// filterSection returns the whole *filter section: KUBE-SERVICES,
// KUBE-EXTERNAL-SERVICES, KUBE-FORWARD, KUBE-NODEPORTS and
// KUBE-PROXY-FIREWALL, and KUBE-FIREWALL with localhost NodePorts, with the
// services' filterRules.
func (b *builder) filterSection(filterRules []byte) []byte {
	var buf bytes.Buffer
	buf.Grow(len(filterRules) + 1024)
	buf.WriteString("*filter\n")
	for _, c := range []string{chainServices, chainExternalServices, chainForward, chainNodePorts, chainProxyFirewall} {
		chainLine(&buf, c)
	}
	if b.localhostNodePorts {
		chainLine(&buf, chainKubeletFirewall)
		writeLine(&buf, "-A", chainKubeletFirewall, "-m", "comment", "--comment", quote("block incoming localnet connections"),
			"-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
			"-j", "DROP")
	}
	buf.Write(filterRules)
	if !b.cfg.ConntrackTCPLiberal {
		// INVALID packets would otherwise reach the pod un-NATed and
		// draw a RST that kills the connection.
		args := []string{"-A", chainForward, "-m", "conntrack", "--ctstate", "INVALID"}
		if b.cfg.CountInvalidDrops {
			args = append(args, "-m", "nfacct", "--nfacct-name", CounterInvalidDropped)
		}
		writeLine(&buf, append(args, "-j", "DROP")...)
	}
	writeLine(&buf, "-A", chainForward, "-m", "comment", "--comment", quote("kubernetes forwarding rules"),
		"-m", "mark", "--mark", b.mark+"/"+b.mark, "-j", "ACCEPT")
	writeLine(&buf, "-A", chainForward, "-m", "comment", "--comment", quote("kubernetes forwarding conntrack rule"),
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	buf.WriteString("COMMIT\n")
	return buf.Bytes()
}

// natTopChains are declared, and so flushed, on every sync.
var natTopChains = []string{chainServices, chainNodePorts, chainPostrouting, chainMarkMasq}

// natTopRules returns the rules of the nat chains in natTopChains, with the
// services' KUBE-SERVICES and KUBE-NODEPORTS rules.
func (b *builder) natTopRules(servicesRules, nodePortRules []byte) []byte {
	var buf bytes.Buffer
	buf.Grow(len(servicesRules) + len(nodePortRules) + 1024)
	writeLine(&buf, "-A", chainPostrouting, "-m", "mark", "!", "--mark", b.mark+"/"+b.mark, "-j", "RETURN")
	// Clear the mark so that a packet that goes through the stack again
	// is not masqueraded twice.
	writeLine(&buf, "-A", chainPostrouting, "-j", "MARK", "--xor-mark", b.mark)
	writeLine(&buf, "-A", chainPostrouting, "-m", "comment", "--comment", quote("kubernetes service traffic requiring SNAT"),
		"-j", "MASQUERADE", "--random-fully")
	writeLine(&buf, "-A", chainMarkMasq, "-j", "MARK", "--or-mark", b.mark)
	buf.Write(servicesRules)
	// The jump to KUBE-NODEPORTS must come after every other capture.
	nodePortsComment := quote("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
	if b.cfg.NodePortsOnNodeIPs {
		for _, ip := range b.cfg.NodeIPs {
			if ip.Is4() && (!ip.IsLoopback() || b.localhostNodePorts) {
				writeLine(&buf, "-A", chainServices, "-m", "comment", "--comment", nodePortsComment,
					"-d", ip.String(), "-j", chainNodePorts)
			}
		}
	} else {
		args := []string{"-A", chainServices, "-m", "comment", "--comment", nodePortsComment, "-m", "addrtype", "--dst-type", "LOCAL"}
		if !b.localhostNodePorts {
			args = append(args, "!", "-d", "127.0.0.0/8")
		}
		writeLine(&buf, append(args, "-j", chainNodePorts)...)
	}
	buf.Write(nodePortRules)
	return buf.Bytes()
}

// Programmed is what a successful iptables-restore left in the kernel: the
// fingerprints of the top-level chains and each service's rules, or, read
// back from iptables-save, just the service chains. A partial sync compares
// the next Ruleset with it.
type Programmed struct {
	complete   bool // false when read back from iptables-save
	filterHash uint64
	natTopHash uint64
	services   map[types.NamespacedName]*serviceRules // when complete
	chains     map[string]struct{}                    // when read back
}

// Programmed returns the state the kernel is in once r's Update has been
// applied.
func (r *Ruleset) Programmed() *Programmed {
	p := &Programmed{
		complete:   true,
		filterHash: r.filterHash,
		natTopHash: r.natTopHash,
		services:   make(map[types.NamespacedName]*serviceRules, len(r.services)),
	}
	for _, s := range r.services {
		p.services[s.name] = s
	}
	return p
}

// ReadProgrammed reads the service chains present in the output of
// "iptables-save -t nat". The result makes the next Update rewrite every
// chain and delete the service chains the Ruleset no longer has.
func ReadProgrammed(natSave []byte) *Programmed {
	p := &Programmed{chains: make(map[string]struct{})}
	for line := range bytes.Lines(natSave) {
		if len(line) < 2 || line[0] != ':' {
			continue
		}
		name, _, _ := bytes.Cut(line[1:], []byte(" "))
		if chain := string(bytes.TrimSpace(name)); isServiceChain(chain) {
			p.chains[chain] = struct{}{}
		}
	}
	return p
}

// Update is the iptables-restore --noflush input that moves the kernel from a
// Programmed state to a Ruleset.
type Update struct {
	// Input is the iptables-restore text.
	Input []byte
	// Rewritten counts the services whose own chains Input rewrites.
	Rewritten int
	// Deleted counts the stale service chains Input flushes and deletes.
	Deleted int
	// Noop tells that nothing differs and Input need not be applied.
	Noop bool
}

// Update returns the restore input that moves the kernel from the state from
// to r. Everything is written when from is nil or was read back from
// iptables-save; otherwise the filter table, the top-level nat chains and
// each service's own chains only when they differ from what from records.
// Service chains that from has and r lacks are flushed and deleted.
func (r *Ruleset) Update(from *Programmed) Update {
	var u Update
	known := from != nil && from.complete
	var changed []*serviceRules
	for _, s := range r.services {
		if known {
			if old := from.services[s.name]; old != nil && old.hash == s.hash {
				continue
			}
		}
		changed = append(changed, s)
	}
	stale := r.staleChains(from)
	writeFilter := !known || from.filterHash != r.filterHash
	writeNatTop := !known || from.natTopHash != r.natTopHash
	u.Rewritten, u.Deleted = len(changed), len(stale)
	u.Noop = known && !writeFilter && !writeNatTop && len(changed) == 0 && len(stale) == 0
	if u.Noop {
		return u
	}

	// The exact size, but for the chain names: the input is copied once.
	const chainLineSize = len(": - [0:0]\n") + 28
	size := len(r.filter) + len(r.natTop) + len(natTopChains)*chainLineSize + 16
	for _, s := range changed {
		size += len(s.rules) + len(s.chains)*chainLineSize
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+len(stale)*(chainLineSize+32)))
	if writeFilter {
		buf.Write(r.filter)
	}
	if !writeNatTop && len(changed) == 0 && len(stale) == 0 {
		u.Input = buf.Bytes()
		return u
	}
	buf.WriteString("*nat\n")
	if writeNatTop {
		for _, c := range natTopChains {
			chainLine(buf, c)
		}
	}
	for _, s := range changed {
		for _, c := range s.chains {
			chainLine(buf, c)
		}
	}
	// Declaring a stale chain flushes it, so that it can be deleted.
	for _, c := range stale {
		chainLine(buf, c)
	}
	if writeNatTop {
		buf.Write(r.natTop)
	}
	for _, s := range changed {
		buf.Write(s.rules)
	}
	for _, c := range stale {
		writeLine(buf, "-X", c)
	}
	buf.WriteString("COMMIT\n")
	u.Input = buf.Bytes()
	return u
}

// staleChains returns, sorted, the service chains the kernel has in state
// from and r does not. A chain belongs to one service (its name hashes the
// service port), so only the services whose rules changed are looked at.
func (r *Ruleset) staleChains(from *Programmed) []string {
	if from == nil {
		return nil
	}
	var stale []string
	if !from.complete {
		current := make(map[string]struct{})
		for _, s := range r.services {
			for _, c := range s.chains {
				current[c] = struct{}{}
			}
		}
		for c := range from.chains {
			if _, ok := current[c]; !ok {
				stale = append(stale, c)
			}
		}
	} else {
		for name, old := range from.services {
			now := r.byName[name]
			if now != nil && now.hash == old.hash {
				continue
			}
			for _, c := range old.chains {
				if now == nil || !slices.Contains(now.chains, c) {
					stale = append(stale, c)
				}
			}
		}
	}
	slices.Sort(stale)
	return stale
}
