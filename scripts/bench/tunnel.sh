#!/usr/bin/env bash
# Benchmarks the userspace IPIP path of dataplane/tunnel against kernel VXLAN (needs root and
# iperf3). Two throwaway node netns share a veth underlay (MTU 1500); each has one pod netns
# wired as the CNI does (veth, /32 route, proxy ARP). The same iperf3 TCP run, pod on node1 to
# pod on node2, goes first through tunl0 served in userspace, then through vxlan.calico. It
# prints both throughputs and their ratio ipip/vxlan; both are measured in the same run on the
# same topology, and nothing here is a pass/fail.
#
#   scripts/bench/tunnel.sh [seconds per run] [parallel streams]
#
# With PROFILE_DIR set, each node's agent writes a CPU profile there (MODE-nodeI.pprof).
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-5}
streams=${2:-1}
profile_dir=${PROFILE_DIR:-}
prefix=nettrace-bench-tunnel-$$
work=$(mktemp -d)
agents=() server= # background processes to stop on exit

cleanup() {
	for pid in "${agents[@]}" $server; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for ns in n1 n2 p1 p2; do
		ip netns del "$prefix-$ns" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/tunnelnode" ./dataplane/tunnel/internal/tunnelnode

# node I: netns n<I> at 192.168.10.10<I> owning 172.16.<I>.0/24, its pod p<I> at 172.16.<I>.10.
for i in 1 2; do
	ip netns add "$prefix-n$i"
	ip netns add "$prefix-p$i"
done
ip -n "$prefix-n1" link add eth0 type veth peer name eth0 netns "$prefix-n2"
for i in 1 2; do
	n=$prefix-n$i p=$prefix-p$i
	ip -n "$n" link set lo up
	ip -n "$n" addr add "192.168.10.10$i/24" dev eth0
	ip -n "$n" link set eth0 up
	ip -n "$n" route add default via 192.168.10.1 dev eth0
	ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
	ip -n "$n" link add cali0 type veth peer name eth0 netns "$p"
	ip -n "$n" link set cali0 up
	ip netns exec "$n" sysctl -qw net.ipv4.conf.cali0.proxy_arp=1
	ip -n "$n" route add "172.16.$i.10/32" dev cali0 scope link
	ip -n "$p" link set lo up
	ip -n "$p" addr add "172.16.$i.10/32" dev eth0
	ip -n "$p" link set eth0 up
	ip -n "$p" route add 169.254.1.1 dev eth0 scope link
	ip -n "$p" route add default via 169.254.1.1 dev eth0
done

ip netns exec "$prefix-p2" iperf3 -s -B 172.16.2.10 >/dev/null 2>&1 &
server=$!

# start_agents MODE: runs the tunnel dataplane of both nodes and waits until both are synced.
start_agents() {
	local blocks=()
	for i in 1 2; do
		blocks+=(-block "172.16.$i.0/24,node$i,192.168.10.10$i,66:00:00:00:00:0$i,172.16.$i.0")
	done
	for i in 1 2; do
		ip netns exec "$prefix-n$i" "$work/tunnelnode" -name "node$i" -ip "192.168.10.10$i" -dev eth0 \
			-mode "$1" -tunnel-addr "172.16.$i.0" -vtep-mac "66:00:00:00:00:0$i" "${blocks[@]}" \
			${profile_dir:+-cpuprofile "$profile_dir/$1-node$i.pprof"} >"$work/agent$i.out" 2>&1 &
		agents+=($!)
	done
	for i in 1 2; do
		for _ in $(seq 100); do
			grep -q '^ready' "$work/agent$i.out" && continue 2
			sleep 0.05
		done
		echo "node$i did not start:" >&2
		cat "$work/agent$i.out" >&2
		return 1
	done
}

# stop_agents: interrupts both agents and prints what they report on the way out.
stop_agents() {
	for pid in "${agents[@]}"; do
		kill -TERM "$pid"
		wait "$pid" || echo "an agent failed" >&2
	done
	agents=()
	grep -h 'stats' "$work"/agent*.out || true
}

# throughput MODE: sets rate to the TCP throughput pod1 → pod2 in Mbit/s, as iperf3's receiver
# saw it. It runs in this shell, not in $(…), so that cleanup knows the agents it starts.
throughput() {
	start_agents "$1"
	ip netns exec "$prefix-p1" ping -c 1 -W 2 172.16.2.10 >/dev/null
	ip netns exec "$prefix-p1" iperf3 -c 172.16.2.10 -t "$seconds" -P "$streams" -f m >"$work/iperf.$1"
	stop_agents
	rate=$(awk '/receiver/ { rate = $(NF-2) } END { print rate }' "$work/iperf.$1")
}

throughput ipip
ipip=$rate
throughput vxlan
vxlan=$rate
ratio=$(awk -v a="$ipip" -v b="$vxlan" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }')
echo "pod-to-pod TCP, ${seconds}s, $streams stream(s):"
echo "  userspace IPIP ${ipip} Mbit/s"
echo "  kernel VXLAN   ${vxlan} Mbit/s"
echo "  ratio ipip/vxlan $ratio"
