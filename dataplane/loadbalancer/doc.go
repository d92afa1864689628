// Package loadbalancer gives Services of type LoadBalancer an address on the
// underlay and announces it, in the manner of MetalLB's layer 2 mode, for
// clusters with no cloud load balancer.
//
// The Controller hands the addresses of a pool to the services, in
// status.loadBalancer.ingress with ipMode VIP. It honours
// spec.loadBalancerIP, keeps an address across restarts by reading the
// statuses back before allocating, releases it when the service goes, and
// leaves a service pending with a Warning Event when the pool is exhausted.
// Every node runs one; a Lease in kube-system elects the one that allocates.
//
// The Speaker runs on every node. For each address, the announcer is the
// first eligible node in the order of sha256(nodeName + "#" + address)
// (Announcer, EligibleNodes): a Ready node whose speaker is alive (it renews
// a Lease of its own), with a ready local endpoint when the service's
// externalTrafficPolicy is Local. The announcer answers ARP
// requests for the address with its underlay interface's MAC, from an
// AF_PACKET socket, and broadcasts gratuitous ARP replies when it takes the
// address over. No node puts the address on an interface: the packets the
// ARP answers draw are caught by the service NAT's rules for the address, as
// with kube-proxy.
package loadbalancer
