#!/usr/bin/env bash
# scripts/walkthrough.sh [OUT]: reproduce each chapter of the seed talk in the running lab and write
# the walkthrough, with the real commands and their real output, to OUT (docs/walkthrough.md).
#
# Run it as root from anywhere, with the lab up (`make lab`). The commands run as shown:
#   kubectl nettrace ...   is bin/kubectl-nettrace (NETTRACE_PLUGIN overrides it), with the lab's
#                          kubeconfig ($KUBECONFIG when set);
#   kubectl ...            is the lab's kubectl, bin/nettrace-lab kubectl -- ...;
#   nettrace-lab ...       is bin/nettrace-lab.
# Each block shows a command's standard output, and its standard error when it failed; a command
# that does not end as the walkthrough expects stops the script. §1 works in throwaway network
# namespaces (nettrace-wt-*), removed at the end; the rest reads the lab and traces in it, and
# flushes the neighbour caches of the pods and nodes it traces, so that their ARP shows.
# lab/e2e/walkthrough_test.go regenerates the file and compares it with docs/walkthrough.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/docs/walkthrough.md}
export KUBECONFIG=${KUBECONFIG:-/var/lib/nettrace-lab/kubeconfig}
plugin=${NETTRACE_PLUGIN:-$repo/bin/kubectl-nettrace}
lab=$repo/bin/nettrace-lab

die() { echo "walkthrough: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root: it creates network namespaces and traces in the lab's nodes"
for b in "$plugin" "$lab"; do [ -x "$b" ] || die "$b is missing: run make build"; done
"$lab" status >/dev/null 2>&1 || die "the lab is not up: run make lab"

# The commands as the reader types them.
kubectl() {
	if [ "${1:-}" = nettrace ]; then
		shift
		"$plugin" "$@"
	else
		"$lab" kubectl -- "$@"
	fi
}
nettrace-lab() { "$lab" "$@"; }

# §1's namespaces go, whatever happens.
wt_netns=(nettrace-wt-host nettrace-wt-red nettrace-wt-blue nettrace-wt-node nettrace-wt-pod1 nettrace-wt-pod2 nettrace-wt-out)
cleanup() {
	for n in "${wt_netns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
	rm -f "${doc:-}" "${cmdout:-}" "${cmderr:-}"
}
trap cleanup EXIT
cleanup
doc=$(mktemp) cmdout=$(mktemp) cmderr=$(mktemp)

w() { printf '%s\n' "$@" >>"$doc"; }

# block CMD...: one console block; each CMD runs in this shell (so that
# variables carry over), its line and its output are written. A CMD that
# starts with "! " is expected to fail.
block() {
	w '```console'
	local cmd want rc
	for cmd in "$@"; do
		want=0
		if [[ $cmd == "! "* ]]; then
			want=1 cmd=${cmd#! }
		fi
		w "\$ $cmd"
		set +e
		eval "$cmd" >"$cmdout" 2>"$cmderr"
		rc=$?
		set -e
		cat "$cmdout" >>"$doc"
		if [ "$rc" != 0 ]; then
			cat "$cmderr" >>"$doc"
		fi
		if { [ "$want" = 0 ] && [ "$rc" != 0 ]; } || { [ "$want" = 1 ] && [ "$rc" = 0 ]; }; then
			die "\`$cmd\` exited with $rc:$(printf '\n%s' "$(cat "$cmdout" "$cmderr")")"
		fi
	done
	w '```' ''
}

# varies WHY: the next block's output changes from run to run; the test
# compares its commands only.
varies() { w "<!-- varies: $* -->"; }

# live TRACE SEND: runs the live trace TRACE, and SEND every 300 ms until
# the trace is done, in one block.
live() {
	local trace=$1 send=$2 pid rc
	w '```console' "\$ $trace &" "\$ $send    # again, until the trace is done"
	eval "$trace" >"$cmdout" 2>"$cmderr" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		eval "$send" >/dev/null 2>&1 || true
		sleep 0.3
	done
	set +e
	wait "$pid"
	rc=$?
	set -e
	cat "$cmdout" >>"$doc"
	[ "$rc" = 0 ] || die "\`$trace\` exited with $rc: $(cat "$cmderr")"
	w '```' ''
}

# flush TARGET...: forget the neighbours of pods and nodes, so that the next
# trace shows its ARP.
flush() {
	local t
	for t in "$@"; do nettrace-lab exec "$t" -- ip neigh flush all >/dev/null; done
}

w '# Walkthrough: the seed talk, chapter by chapter, in the lab' ''
w 'Each chapter of the seed talk ("Kubernetes networking, step by step", a three-node Vagrant cluster with'
w 'Calico in IPIP mode and kube-proxy in iptables mode) reproduced in the lab (`make lab`): what the chapter'
w 'shows, the commands that show it here with their real output, and the `kubectl nettrace` trace that shows'
w 'it hop by hop. `scripts/walkthrough.sh` ran every command below against a lab and wrote this file;'
w 'run it again to regenerate it (`lab/e2e/walkthrough_test.go` checks that a fresh run still has the same'
w 'sections, commands and, addresses, ports, hashes, ages and timings aside, the same output).' ''
w '`kubectl nettrace` is `bin/kubectl-nettrace`; `kubectl` is the lab'"'"'s, `bin/nettrace-lab kubectl --`;'
w '`nettrace-lab` is `bin/nettrace-lab`. A block shows what a command printed on its standard output (a'
w 'trace'"'"'s progress lines go to standard error), and its standard error when it failed.' ''

w '## §1 A container is a process with namespaces' ''
w 'A container is a process in namespaces of its own; two network namespaces talk over a veth pair, and'
w 'many are joined by a bridge. The host filters what crosses it in its FORWARD chain, so the ping between'
w 'two namespaces fails while the policy is DROP (as Docker leaves it); reaching the outside takes a default'
w 'route via the host and a MASQUERADE. The seed'"'"'s steps, in throwaway namespaces: `nettrace-wt-host`'
w 'stands for the seed'"'"'s host, so that nothing touches the machine'"'"'s own network.' ''
block 'ip netns add nettrace-wt-host' \
	'ip netns add nettrace-wt-red' \
	'ip netns add nettrace-wt-blue' \
	'ip -n nettrace-wt-host link add br0 type bridge' \
	'ip -n nettrace-wt-host addr add 11.11.11.1/24 dev br0' \
	'ip -n nettrace-wt-host link add veth1 type veth peer name veth2' \
	'ip -n nettrace-wt-host link add veth3 type veth peer name veth4' \
	'ip -n nettrace-wt-host link set veth1 netns nettrace-wt-red' \
	'ip -n nettrace-wt-host link set veth3 netns nettrace-wt-blue' \
	'ip -n nettrace-wt-host link set veth2 master br0' \
	'ip -n nettrace-wt-host link set veth4 master br0' \
	'ip -n nettrace-wt-red addr add 11.11.11.2/24 dev veth1' \
	'ip -n nettrace-wt-blue addr add 11.11.11.3/24 dev veth3' \
	'for l in br0 veth2 veth4; do ip -n nettrace-wt-host link set $l up; done' \
	'ip -n nettrace-wt-red link set veth1 up; ip -n nettrace-wt-blue link set veth3 up' \
	'ip netns exec nettrace-wt-host iptables --policy FORWARD DROP' \
	'! ip netns exec nettrace-wt-red ping -c 2 -W 1 11.11.11.3' \
	'ip netns exec nettrace-wt-host iptables --policy FORWARD ACCEPT' \
	'ip netns exec nettrace-wt-red ping -c 2 -W 1 11.11.11.3'

w '`kubectl nettrace node` finds a pod by the `cali*` veth that its node routes it to, so the trace runs on'
w 'the same kind of namespaces wired as Calico wires pods (§5): each veth'"'"'s host end routed, not bridged,'
w 'with proxy ARP for the pods'"'"' gateway 169.254.1.1, and an outside world at 198.18.0.1. The trace of the'
w 'failing ping names the FORWARD policy that drops it; with the policy ACCEPT it is delivered and replied.' ''
block 'for n in node pod1 pod2 out; do ip netns add nettrace-wt-$n; done' \
	'ip -n nettrace-wt-node link add cali1 type veth peer name eth0 netns nettrace-wt-pod1' \
	'ip -n nettrace-wt-node link add cali2 type veth peer name eth0 netns nettrace-wt-pod2' \
	'ip -n nettrace-wt-node link add veth-out type veth peer name eth0 netns nettrace-wt-out' \
	'ip -n nettrace-wt-pod1 addr add 11.11.11.2/32 dev eth0; ip -n nettrace-wt-pod2 addr add 11.11.11.3/32 dev eth0' \
	'ip -n nettrace-wt-out addr add 198.18.0.1/24 dev eth0; ip -n nettrace-wt-node addr add 198.18.0.254/24 dev veth-out' \
	'for n in pod1 pod2 out; do ip -n nettrace-wt-$n link set eth0 up; done' \
	'for l in cali1 cali2 veth-out; do ip -n nettrace-wt-node link set $l up; done' \
	'for n in pod1 pod2; do ip -n nettrace-wt-$n route add 169.254.1.1 dev eth0 scope link; ip -n nettrace-wt-$n route add default via 169.254.1.1; done' \
	'ip -n nettrace-wt-node route add 11.11.11.2 dev cali1; ip -n nettrace-wt-node route add 11.11.11.3 dev cali2' \
	'ip -n nettrace-wt-node route add default via 198.18.0.1' \
	'for l in cali1 cali2; do ip netns exec nettrace-wt-node sysctl -qw net.ipv4.conf.$l.proxy_arp=1 net.ipv4.neigh.$l.proxy_delay=0; done' \
	'ip netns exec nettrace-wt-node sysctl -qw net.ipv4.ip_forward=1' \
	'ip netns exec nettrace-wt-node iptables --policy FORWARD DROP' \
	'kubectl nettrace node --netns /run/netns/nettrace-wt-node --node-name host --from 11.11.11.2 --to 11.11.11.3/icmp --timeout 1s' \
	'ip netns exec nettrace-wt-node iptables --policy FORWARD ACCEPT' \
	'kubectl nettrace node --netns /run/netns/nettrace-wt-node --node-name host --from 11.11.11.2 --to 11.11.11.3/icmp --timeout 1s'

w 'The outside world has no route back to 11.11.11.0/24: the request leaves, and nothing comes back. With'
w 'the MASQUERADE, the trace shows the rule that rewrote the source to the host'"'"'s address, and the reply'
w 'rewritten back.' ''
block 'kubectl nettrace node --netns /run/netns/nettrace-wt-node --node-name host --from 11.11.11.2 --to 198.18.0.1/icmp --timeout 1s' \
	'ip netns exec nettrace-wt-node iptables -t nat -A POSTROUTING -s 11.11.11.0/24 -j MASQUERADE' \
	'kubectl nettrace node --netns /run/netns/nettrace-wt-node --node-name host --from 11.11.11.2 --to 198.18.0.1/icmp --timeout 1s'
cleanup_wt() { for n in "${wt_netns[@]}"; do ip netns del "$n" 2>/dev/null || true; done; }
cleanup_wt

w '## §2 Kubernetes and the CNI' ''
w 'Kubernetes leaves the network to a CNI plugin, which does for pods what §1 did by hand and must make four'
w 'things work: the containers of a pod (§4), pods with pods on one node and across nodes (§5, §6a), pods'
w 'with services (§6b), and the outside with services (§7). The lab'"'"'s plugin (`bin/nettrace-cni`) is'
w 'Calico-like: block IPAM, a `cali*` veth per pod, proxy ARP, IPIP between nodes.' ''
block 'kubectl get nodes'

w '## §3 Calico: routes shared between nodes, block IPAM' ''
w 'Calico shares each node'"'"'s pod routes over BGP (Bird) and manages the routes and iptables (Felix); its IPAM'
w 'hands each node a block of the pool, which `calicoctl ipam show --show-blocks` prints. Here the pool is'
w '172.16.0.0/16 in /24 blocks, one per node, and `kubectl nettrace ipam show` prints the same table. A'
w 'node routes its own block to a blackhole (its pods have /32 routes over their veths) and each other'
w 'node'"'"'s block over tunl0 to that node.' ''
varies 'the blocks are chosen at random, and the addresses in use depend on where the pods were scheduled'
block 'kubectl nettrace ipam show' \
	'kubectl nettrace ipam show --show-blocks'
varies 'the order of the routes follows the blocks chosen'
block 'nettrace-lab exec node/k8s-w1 -- ip route show proto bird'

w '## §4 The containers of a pod' ''
w 'Every pod has a pause container that holds its network namespace; the pod'"'"'s containers share it and reach'
w 'each other on 127.0.0.1. pod1 runs nginx and netshoot. The trace from pod1 to its own 127.0.0.1:80 gets'
w 'its answer and not one hop: nothing leaves the pod'"'"'s namespace, not even its eth0.' ''
block 'kubectl get pod pod1 -o jsonpath='"'"'{range .spec.containers[*]}{.name}{" "}{.image}{"\n"}{end}'"'" \
	'nettrace-lab exec pod1 -c netshoot -- curl -s 127.0.0.1:80 | head -4' \
	'kubectl nettrace pod1 127.0.0.1:80'

w '## §5 Pod to pod on one node: routes and proxy ARP' ''
w 'client and server run on k8s-w1. The pod'"'"'s default route goes to 169.254.1.1, an address nobody has:'
w 'the host answers its ARP on the pod'"'"'s `cali*` veth with ee:ee:ee:ee:ee:ee (proxy ARP), routes the packet'
w 'by the /32 route of the other pod'"'"'s veth, through the FORWARD chain and cali-FORWARD. The trace shows'
w 'each veth, the proxy ARP reply, the route and the FORWARD rules, there and back. Each end of a pod'"'"'s veth'
w 'is captured where packets enter it, as the other end sends them: the client'"'"'s ARP request and ping show'
w 'on its `cali*` veth, the answers in its eth0; what the host sends the server shows in the server'"'"'s eth0.' ''
flush client server node/k8s-w1
block 'kubectl get pods client server -o wide' \
	'nettrace-lab exec client -- ip route' \
	'SERVER=$(kubectl get pod server -o jsonpath={.status.podIP})' \
	'nettrace-lab exec node/k8s-w1 -- ip route get $SERVER' \
	'nettrace-lab exec node/k8s-w1 -- iptables --numeric --table filter --list FORWARD' \
	'kubectl nettrace client pod/server --proto icmp'

w '## §6a Pod to pod across nodes: IPIP' ''
w 'server-w2 runs on k8s-w2. The route to its node'"'"'s block goes over tunl0, which wraps the pod'"'"'s packet'
w 'in an outer IP header from node to node (protocol 4); k8s-w2 unwraps it and delivers it. The trace shows'
w 'the packet inside the tunnel on both nodes'"'"' eth0, with its outer and inner headers, the encapsulation on'
w 'one node and the decapsulation on the other, and the same for the reply.' ''
flush client server-w2 node/k8s-w1 node/k8s-w2
block 'kubectl get pods client server-w2 -o wide' \
	'SERVER_W2=$(kubectl get pod server-w2 -o jsonpath={.status.podIP})' \
	'nettrace-lab exec node/k8s-w1 -- ip route get $SERVER_W2' \
	'kubectl nettrace client pod/server-w2 --proto icmp'

w '## §6b Pod to service: ClusterIP, DNAT and the KUBE- chains' ''
w 'A service is a stable address in front of pods that come and go. kube-proxy (iptables mode; here the'
w 'reference service NAT, which writes the same rules) sends the ClusterIP through KUBE-SERVICES, the'
w 'service'"'"'s KUBE-SVC chain, which picks an endpoint with statistic probabilities, and that endpoint'"'"'s'
w 'KUBE-SEP chain, which DNATs the packet to the pod. whoami (clusterip-dnat) shows that the request'
w 'arrived at its pod address. The trace shows every chain and rule, and the DNAT with conntrack'"'"'s tuples.' ''
block 'kubectl get svc nginx-test clusterip-dnat' \
	'nettrace-lab exec client -- curl -s clusterip-dnat' \
	'kubectl nettrace client svc/clusterip-dnat'
w 'nginx-test has three endpoints, two on k8s-w2 and one on k8s-w1; each trace shows the one that the'
w 'statistic rules chose for it, with the probability of the rule that chose it.' ''
varies 'the DNAT chooses one of three endpoints'
block 'kubectl nettrace client svc/nginx-test'

w '## §7 From outside: NodePort and LoadBalancer' ''
w 'A ClusterIP exists only inside the cluster. A NodePort opens the port on every node, also those without'
w 'the pod: nodeport-dnat'"'"'s pod runs on k8s-w1, and a client outside calls k8s-w2. k8s-w2 DNATs the request'
w 'to the pod and masquerades its source to its own tunnel address, so the reply comes back through it;'
w 'whoami sees that address as its client. The trace follows curl'"'"'s own connection from the outside world'
w '(192.168.10.1): KUBE-NODEPORTS, KUBE-EXT, the DNAT and KUBE-POSTROUTING'"'"'s MASQUERADE on k8s-w2, IPIP to'
w 'k8s-w1, the delivery, and the reply back through k8s-w2, where both NATs are undone.' ''
block 'kubectl get svc nodeport-dnat nginx-nodeport-test' \
	'nettrace-lab exec external -- curl -s 192.168.10.102:31010'
flush node/k8s-w1 node/k8s-w2 nodeport-dnat
live 'kubectl nettrace ip/192.168.10.1 node/k8s-w2:31010 --live --timeout 20s' \
	'nettrace-lab exec external -- curl -s -m 2 192.168.10.102:31010'
w 'On-prem, a load balancer in front of the nodes (hardware, or MetalLB) gives a service an address of its'
w 'own. The lab'"'"'s is MetalLB-like in layer 2 mode: nginx-lb gets 192.168.10.200 from the underlay, one node'
w 'answers ARP for it, and there the service NAT DNATs it as a node port does. The trace enters by that node.' ''
block 'kubectl get svc nginx-lb' \
	'nettrace-lab exec external -- curl -s 192.168.10.200 | head -4'
varies 'the DNAT chooses one of three endpoints'
live 'kubectl nettrace ip/192.168.10.1 192.168.10.200:80 --live --timeout 20s' \
	'nettrace-lab exec external -- curl -s -m 2 192.168.10.200'

w '## §8 DNS: CoreDNS' ''
w 'The cluster DNS is a Deployment behind the service kube-dns, 10.96.0.10. It answers'
w '`<service>.<namespace>.svc.cluster.local` and `<a-b-c-d>.<namespace>.pod.cluster.local` from the API, and'
w 'forwards other names upstream (google.com resolves to the outside world'"'"'s web server here). A trace to a'
w 'name first traces the lookup from the pod to kube-dns, then the flow to the answer.' ''
block 'kubectl -n kube-system get svc kube-dns' \
	'nettrace-lab exec client -- dig +short coredns-example.default.svc.cluster.local' \
	'POD=$(kubectl get pod coredns-example -o jsonpath={.status.podIP})' \
	'nettrace-lab exec client -- dig +short ${POD//./-}.default.pod.cluster.local' \
	'nettrace-lab exec client -- dig +short google.com' \
	'nettrace-lab exec client -- curl -s coredns-example.default.svc.cluster.local | head -4'
varies 'the lookup goes to one of the two DNS pods'
block 'kubectl nettrace client coredns-example.default.svc.cluster.local:80'

w '## §9 Ingress' ''
w 'An ingress controller routes HTTP by host and path straight to the pods of a service, skipping the'
w 'service'"'"'s NAT (one NAT fewer), which is why it needs to list and watch endpoints. The lab has no'
w 'ingress controller yet: this chapter is not reproduced.' ''

mv "$doc" "$out"
echo "wrote $out" >&2
