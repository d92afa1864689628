#!/usr/bin/env bash
# Benchmarks the on-node trace engine through `kubectl nettrace node` (needs
# root, iperf3 and jq). A node namespace gets two pods wired as Calico wires
# them and kube-proxy's rules for the ClusterIP 10.96.0.100:80, whose endpoint
# is pod B (trace/engine/enginetest/node.rules, loaded with
# iptables-$BACKEND-restore, legacy by default). Then:
#
#   (a) time to answer: the wall time of `node` probing pod A -> 10.96.0.100:80,
#       from the command's start to its exit, median of RUNS runs (goal < 300 ms);
#   (b) throughput of an untraced iperf3 TCP flow from pod A to pod B, through
#       the node, without and with a live trace armed on the node; each measured
#       ROUNDS times (5), alternating, and the medians compared (goal >= 0.99);
#   (c) probe traces while iperf3 sends 64-byte UDP datagrams from pod A to pod B
#       at about 100 kpps: the traced flow's hops against those of (a), and the
#       events the sources reported lost (goal: none, or reported).
#
# Every figure comes from this one run, on whatever else the machine runs;
# nothing here is pass/fail.
#
#   scripts/bench/engine.sh [runs] [seconds per iperf3 run]
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=${1:-15}
seconds=${2:-4}
backend=${BACKEND:-legacy}
rounds=${ROUNDS:-5}
flood_pps=100000
flood_size=64
prefix=nettrace-bench-engine-$$
node=$prefix-node pod_a=$prefix-a pod_b=$prefix-b switch=$prefix-sw
work=$(mktemp -d)
pids=() # background processes to stop on exit

cleanup() {
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	# Inside the node, the current namespace is the node's: nothing outside it is touched.
	if [[ -x $work/kubectl-nettrace ]]; then
		ip netns exec "$node" "$work/kubectl-nettrace" cleanup >/dev/null 2>&1 || true
	fi
	for n in "$node" "$pod_a" "$pod_b" "$switch"; do
		ip netns del "$n" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/kubectl-nettrace" ./cmd/kubectl-nettrace

# The node: eth0 to a switch namespace, a default route (proxy ARP needs one), forwarding.
for n in "$node" "$pod_a" "$pod_b" "$switch"; do
	ip netns add "$n"
	ip -n "$n" link set lo up
done
ip -n "$node" link add eth0 type veth peer name sw0 netns "$switch"
ip -n "$switch" link set sw0 up
ip -n "$node" addr add 192.168.10.101/24 dev eth0
ip -n "$node" link set eth0 up
ip -n "$node" route add default via 192.168.10.1 dev eth0
ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1

# pod NETNS IP VETH: a pod as Calico's CNI plugin wires it.
pod() {
	local netns=$1 ip=$2 veth=$3
	ip -n "$node" link add "$veth" type veth peer name eth0 netns "$netns"
	ip -n "$node" link set "$veth" address ee:ee:ee:ee:ee:ee up
	ip netns exec "$node" sysctl -qw "net.ipv4.conf.$veth.proxy_arp=1" "net.ipv4.neigh.$veth.proxy_delay=0"
	ip -n "$node" route add "$ip/32" dev "$veth" scope link
	ip -n "$netns" addr add "$ip/32" dev eth0
	ip -n "$netns" link set eth0 up
	ip -n "$netns" route add 169.254.1.1 dev eth0 scope link
	ip -n "$netns" route add default via 169.254.1.1 dev eth0
}
pod "$pod_a" 172.16.1.10 calia1b2c3d4e5f
pod "$pod_b" 172.16.1.11 cali0f1e2d3c4b5
ip netns exec "$node" "iptables-$backend-restore" <trace/engine/enginetest/node.rules

# Pod B serves the service's port 80 and the iperf3 load on 5201.
ip netns exec "$pod_b" iperf3 -s -p 80 >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$pod_b" iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[[ $(ip netns exec "$pod_b" ss -Hltn | wc -l) -ge 2 ]] && break
	sleep 0.05
done

knt() { "$work/kubectl-nettrace" node --netns "/run/netns/$node" --node-name k8s-w1 "$@"; }
probe() { knt --from 172.16.1.10 --to 10.96.0.100:80 -o json "$@"; }

# median: the median of the numbers on stdin.
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# hops FILE: the number of hops of the path in FILE.
hops() { jq '.hops | length' "$1"; }

# (a) time to answer
probe >"$work/warm.json" 2>/dev/null # fills the page cache with the binary
: >"$work/times"
for i in $(seq "$runs"); do
	start=$(date +%s%N)
	probe >"$work/a.json" 2>"$work/a.err" || {
		echo "probe run $i failed:" >&2
		cat "$work/a.err" >&2
		exit 1
	}
	echo $((($(date +%s%N) - start) / 1000000)) >>"$work/times"
	[[ $(jq -r .verdict.result "$work/a.json") == replied ]] || echo "probe run $i: $(jq -c .verdict "$work/a.json")" >&2
done
baseline_hops=$(hops "$work/a.json")

# (b) untraced throughput, without and with a live trace armed
tcp_bps() { ip netns exec "$pod_a" iperf3 -c 172.16.1.11 -t "$seconds" -J | jq '.end.sum_received.bits_per_second'; }
: >"$work/untraced" && : >"$work/traced"
for _ in $(seq "$rounds"); do
	tcp_bps >>"$work/untraced"
	# Started directly, not through knt, so that $! is the tracer, which SIGINT stops.
	"$work/kubectl-nettrace" node --netns "/run/netns/$node" --node-name k8s-w1 \
		--from 172.16.1.10 --to 10.96.0.100:80 --live --timeout 1h >/dev/null 2>"$work/live.err" &
	live=$!
	pids+=("$live")
	for _ in $(seq 200); do
		grep -q '^waiting up to' "$work/live.err" && break
		sleep 0.05
	done
	grep -q '^waiting up to' "$work/live.err" || {
		echo "the live trace did not arm:" >&2
		cat "$work/live.err" >&2
		exit 1
	}
	tcp_bps >>"$work/traced"
	kill -INT "$live" 2>/dev/null || true # it ends by itself if it saw a packet to port 80
	wait "$live" || true # 4: interrupted, after restoring the node
done
untraced=$(median <"$work/untraced")
traced=$(median <"$work/traced")

# (c) probe traces under a UDP flood
flood_seconds=$((5 + runs / 2))
ip netns exec "$pod_a" iperf3 -c 172.16.1.11 -u -l "$flood_size" -b $((flood_pps * flood_size * 8)) \
	-t "$flood_seconds" -J >"$work/flood.json" &
flood=$!
pids+=("$flood")
sleep 1
loaded=0 lost_events=0 short=0
: >"$work/lost"
while kill -0 "$flood" 2>/dev/null && ((loaded < 5)); do
	probe >"$work/c.json" 2>/dev/null
	loaded=$((loaded + 1))
	n=$(hops "$work/c.json")
	((n < baseline_hops)) && short=$((short + 1))
	jq -r '.lost[]? | "\(.source) on \(.node): \(.count): \(.detail)"' "$work/c.json" >>"$work/lost"
	lost_events=$((lost_events + $(jq '[.lost[]?.count] | add // 0' "$work/c.json")))
done
wait "$flood"
flood_rate=$(jq '.end.sum.packets / .end.sum.seconds | floor' "$work/flood.json")

cat <<EOF
engine benchmark: backend $backend, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)
(a) time to answer, probe pod -> ClusterIP: median $(median <"$work/times") ms over $runs runs (min $(sort -n "$work/times" | head -1), max $(sort -n "$work/times" | tail -1)); goal < 300 ms
(b) untraced TCP pod -> pod through the node, ${seconds}s runs, medians of $rounds:
      without a trace   $(awk -v b="$untraced" 'BEGIN {printf "%.0f", b / 1e6}') Mbit/s  (runs: $(awk '{printf "%.0f ", $1 / 1e6}' "$work/untraced"))
      live trace armed  $(awk -v b="$traced" 'BEGIN {printf "%.0f", b / 1e6}') Mbit/s  (runs: $(awk '{printf "%.0f ", $1 / 1e6}' "$work/traced"))
      ratio traced/untraced $(awk -v t="$traced" -v u="$untraced" 'BEGIN {printf "%.3f", t / u}'); goal >= 0.99
(c) $loaded probe traces under $flood_rate pps of ${flood_size}-byte UDP (asked $flood_pps):
      traces with fewer hops than without load ($baseline_hops): $short
      events lost: $lost_events
EOF
sed 's/^/      /' "$work/lost"
