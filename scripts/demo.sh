#!/usr/bin/env bash
# scripts/demo.sh: the README's main command, `make demo`. It builds the project (make does it first
# when it runs this), brings the lab up with the seed's examples (bin/nettrace-lab up --with-examples,
# which keeps a lab that is up), and traces the seed's scenarios with kubectl nettrace, each under a
# heading that says what the seed's chapter showed. It leaves the lab up and says how to take it down.
# Run it as root: the lab makes network namespaces, links and rules, and the traces arm in the nodes.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

die() {
	echo "demo: $*" >&2
	exit 1
}

if [ "$(id -u)" != 0 ]; then
	die "run it as root (sudo make demo): the lab creates network namespaces, links and iptables rules, and runs the cluster's processes"
fi
missing=()
for tool in ip iptables iptables-legacy nft conntrack curl; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
	die "missing tools: ${missing[*]} (on Debian 12: apt-get install iproute2 iptables nftables conntrack curl)"
fi
# make demo has built everything already; run alone, the script builds.
if [ -z "${MAKELEVEL:-}" ]; then
	command -v go >/dev/null || die "go is not on the PATH: install Go 1.26 to build the project"
	make build controlplane
fi
for b in kubectl-nettrace nettrace-lab nettrace-agent nettrace-cni nettrace-node nettrace-dns; do
	[ -x "bin/$b" ] || die "bin/$b is missing: make build did not build it"
done

if [ -t 1 ]; then
	bold=$'\e[1m' dim=$'\e[2m' reset=$'\e[0m'
else
	bold='' dim='' reset=''
fi
heading() {
	printf '\n%s== %s%s\n' "$bold" "$1" "$reset"
	shift
	printf '%s\n' "$@"
	echo
}
shown() { printf '%s$ %s%s\n' "$dim" "$*" "$reset"; }

heading "The lab: three nodes, the seed's examples" \
	"bin/nettrace-lab up --with-examples: k8s-m 192.168.10.10, k8s-w1 .101, k8s-w2 .102; pods from 172.16.0.0/16."
bin/nettrace-lab up --with-examples
export KUBECONFIG=/var/lib/nettrace-lab/kubeconfig

# nettrace runs `kubectl nettrace ARGS`; the agents start with the lab,
# so a trace that finds none yet (exit 3) is tried again.
nettrace() {
	shown kubectl nettrace "$@"
	local rc
	for attempt in 1 2 3 4 5 6; do
		rc=0
		bin/kubectl-nettrace "$@" || rc=$?
		[ "$rc" = 3 ] || break
		echo "(the agents are not all up yet; trying again)" >&2
		sleep 5
	done
	[ "$rc" = 0 ] || die "kubectl nettrace $* exited with $rc"
}

heading "Same node (seed §5): client → server, both on k8s-w1" \
	"The pod's default route is 169.254.1.1, which the host answers by proxy ARP (ee:ee:ee:ee:ee:ee) on the" \
	"pod's cali veth; the host routes the packet to the other pod's veth through FORWARD and cali-FORWARD."
bin/nettrace-lab exec client -- ip neigh flush all
nettrace client pod/server --proto icmp

heading "Cross node (seed §6a): client on k8s-w1 → server-w2 on k8s-w2" \
	"tunl0 wraps the pod's packet in an outer IP header from node to node (IPIP, protocol 4); k8s-w2 unwraps it."
nettrace client pod/server-w2 --proto icmp

heading "ClusterIP (seed §6b): client → svc/nginx-test" \
	"KUBE-SERVICES → KUBE-SVC picks one of three endpoints by probability → KUBE-SEP DNATs to its pod."
nettrace client svc/nginx-test

heading "ClusterIP DNAT (seed §6b): client → clusterip-dnat" \
	"whoami sees the request at its pod address: the ClusterIP was DNATed to it."
nettrace client clusterip-dnat

heading "NodePort from outside through a node without the pod (seed §7)" \
	"curl from outside to k8s-w2:31010; the pod runs on k8s-w1. k8s-w2 DNATs to the pod and masquerades" \
	"the source (KUBE-POSTROUTING), so the reply returns through k8s-w2, which undoes both NATs."
shown "kubectl nettrace ip/192.168.10.1 node/k8s-w2:31010 --live --timeout 30s &"
shown "bin/nettrace-lab exec external -- curl -s 192.168.10.102:31010    # again, until the trace is done"
bin/kubectl-nettrace ip/192.168.10.1 node/k8s-w2:31010 --live --timeout 30s &
trace_pid=$!
while kill -0 "$trace_pid" 2>/dev/null; do
	bin/nettrace-lab exec external -- curl -s -m 2 192.168.10.102:31010 >/dev/null 2>&1 || true
	sleep 0.5
done
wait "$trace_pid" || die "the trace from outside failed"

heading "DNS (seed §8): client → nginx-test.default.svc.cluster.local" \
	"The name is looked up through kube-dns (10.96.0.10) first, then the flow to the answer is traced."
nettrace client nginx-test.default.svc.cluster.local

heading "The lab is up" \
	"More: docs/walkthrough.md (every chapter of the seed), kubectl nettrace --help, and" \
	"  bin/kubectl-nettrace assert -f docs/paths.yaml    # the same paths, as CI checks" \
	"  bin/kubectl-nettrace ipam show --show-blocks               # seed §3" \
	"  export KUBECONFIG=/var/lib/nettrace-lab/kubeconfig          # for kubectl nettrace" \
	"Take it down with: bin/nettrace-lab down    (or make down)"
