#!/usr/bin/env bash
# Benchmarks the on-node trace engine through `kubectl nettrace node` (needs
# root, iperf3 and jq). A node namespace gets two pods wired as Calico wires
# them and kube-proxy's rules for the ClusterIP 10.96.0.100:80, whose endpoint
# is pod B (trace/engine/enginetest/node.rules, loaded with
# iptables-$BACKEND-restore, legacy by default; with RAW=1 also a raw table
# as Calico's, whose chain does nothing here, so that the legacy tracer uses
# its TRACE chain instead of the nft marker). Then:
#
#   (a) time to answer: the wall time of `node` probing pod A -> 10.96.0.100:80,
#       from the command's start to its exit, median of RUNS runs (goal < 300 ms);
#   (b) throughput of an untraced iperf3 TCP flow from pod A to pod B, through
#       the node, without and with a live trace armed on the node, in ROUNDS
#       (16) pairs of runs: the median ratio and its 90 % interval (goal >=
#       0.99); then the CPU the flow costs at a fixed rate, without and with;
#       with PARTS=1, the CPU cost at the same rate of the trace's parts: its
#       nft marker alone (the table a live trace loads, loaded by hand with
#       no tracer running), the same table with its chains' hooks alone (no
#       set, no rule), and with its rules counting instead of setting nftrace;
#       the live trace without its marker (its table
#       deleted once armed: the captures and the conntrack, nflog and nftrace
#       listeners stay), and the captures alone (the five the live trace
#       opens, each by capture/internal/capturebench, with the port of its
#       match). Not with RAW=1, whose marker is an iptables chain;
#   (c) probe traces while two iperf3 clients send 64-byte UDP datagrams from pod A to pod B
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
seconds=${2:-2}
backend=${BACKEND:-legacy}
raw=${RAW:-0}
parts=${PARTS:-0}
rounds=${ROUNDS:-16}
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
((parts)) && go build -o "$work/capturebench" ./capture/internal/capturebench

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
if ((raw)); then
	ip netns exec "$node" "iptables-$backend-restore" --noflush <<-EOF
		*raw
		:cali-PREROUTING - [0:0]
		-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
		-A cali-PREROUTING -m comment --comment "cali:failsafe" -p tcp --dport 179 -j ACCEPT
		COMMIT
	EOF
fi

# Pod B serves the service's port 80 and the iperf3 load on 5201 and 5203. The load's
# client and server run on CPUs of their own, when there are two.
if (($(nproc) >= 2)); then
	client_cpu=(taskset -c 0) server_cpu=(taskset -c 1)
else
	client_cpu=() server_cpu=()
fi
ip netns exec "$pod_b" iperf3 -s -p 80 >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$pod_b" "${server_cpu[@]}" iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$pod_b" iperf3 -s -p 5203 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[[ $(ip netns exec "$pod_b" ss -Hltn | wc -l) -ge 3 ]] && break
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

# (b) untraced throughput, without and with a live trace armed. Single runs
# vary by tens of percent on a shared machine whatever the trace does, so the
# runs come in pairs, one without and one with the trace, in alternating order
# (ABBA, so that a drift weighs on both); the result is the median of the
# pairs' ratios and a 90 % bootstrap interval of that median. The same pairs
# are then run at a fixed rate, half the untraced median, comparing the CPU
# that iperf3 reports for the sender and the receiver (the kernel's
# forwarding work is charged to them): the cost the trace adds, less noisy
# than a throughput.
# iperf FILTER [iperf3 options]: one run from pod A to pod B, reduced by the jq FILTER.
iperf() {
	local filter=$1
	shift
	ip netns exec "$pod_a" "${client_cpu[@]}" iperf3 -c 172.16.1.11 -t "$seconds" -J "$@" | jq "$filter"
}
bps='.end.sum_received.bits_per_second'
cpu='.end.cpu_utilization_percent | .host_total + .remote_total'

# arm_live and disarm_live start and stop a live trace of another flow on the node.
live=
arm_live() {
	# Started directly, not through knt, so that $live is the tracer, which SIGINT stops.
	"$work/kubectl-nettrace" node --netns "/run/netns/$node" --node-name k8s-w1 \
		--from 172.16.1.10 --to 10.96.0.100:80 --live --timeout 1h >/dev/null 2>"$work/live.err" &
	live=$!
	pids+=("$live")
	for _ in $(seq 200); do
		grep -q '^waiting up to' "$work/live.err" && return
		sleep 0.05
	done
	echo "the live trace did not arm:" >&2
	cat "$work/live.err" >&2
	exit 1
}
disarm_live() {
	kill -INT "$live" 2>/dev/null || true # it ends by itself if it saw a packet to port 80
	wait "$live" || true                  # 4: interrupted, after restoring the node
}

# The parts of a trace, for PARTS=1: the marker's nft table, as a live trace
# loads it, is kept in $work/marker.nft; hooks.nft holds its chains' hooks
# alone, counting.nft its rules with a counter in place of nftrace. arm_marker
# loads $work/$marker.nft.
nft_node() { ip netns exec "$node" nft "$@"; }
marker_table() { nft_node list tables | awk '$3 ~ /^nettrace_/ {print $3}'; }
keep_marker() {
	arm_live
	nft_node list table ip "$(marker_table)" >"$work/marker.nft"
	disarm_live
	awk '/^table / || /^\t\ttype filter hook/ || /^}$/ {print}
		/^\tchain / {print; chain = 1}
		/^\t}$/ {if (chain) print; chain = 0}' "$work/marker.nft" >"$work/hooks.nft"
	sed 's/meta nftrace set 1/counter/' "$work/marker.nft" >"$work/counting.nft"
}
marker=marker
arm_marker() { nft_node -f "$work/$marker.nft"; }
disarm_marker() { nft_node delete table ip "$(marker_table)"; }
arm_unmarked() { arm_live && nft_node delete table ip "$(marker_table)"; }
disarm_unmarked() { disarm_live 2>/dev/null; } # the tracer finds its table gone
captures=()
arm_captures() {
	local spec netns iface way i=0
	rm -f "$work"/captured.*
	# As the live trace's progress line lists them: netns, interface, way.
	for spec in "$node calia1b2c3d4e5f in" "$node cali0f1e2d3c4b5 in" "$node eth0 both" \
		"$pod_a eth0 in" "$pod_b eth0 in"; do
		read -r netns iface way <<<"$spec"
		"$work/capturebench" -netns "/run/netns/$netns" -iface "$iface" -proto tcp -port 80 \
			-inbound="$([[ $way == in ]] && echo true || echo false)" -started "$work/captured.$i" >/dev/null &
		captures+=($!)
		pids+=($!)
		i=$((i + 1))
	done
	for _ in $(seq 200); do
		(($(ls "$work"/captured.* 2>/dev/null | wc -l) == i)) && return
		sleep 0.05
	done
	echo "the captures did not start" >&2
	exit 1
}
disarm_captures() {
	kill -INT "${captures[@]}" 2>/dev/null || true
	wait "${captures[@]}" || true
	captures=()
}

# pairs NAME FILTER [iperf3 options]: ROUNDS pairs of runs, into $work/NAME.untraced,
# $work/NAME.traced and, traced over untraced, $work/NAME.ratio. The traced run
# of a pair is between arm and disarm, arm_live and disarm_live unless set.
arm=arm_live disarm=disarm_live
pairs() {
	local name=$1 i u t
	shift
	: >"$work/$name.untraced" && : >"$work/$name.traced" && : >"$work/$name.ratio"
	for i in $(seq "$rounds"); do
		if ((i % 4 == 1 || i % 4 == 0)); then
			u=$(iperf "$@")
			$arm && t=$(iperf "$@") && $disarm
		else
			$arm && t=$(iperf "$@") && $disarm
			u=$(iperf "$@")
		fi
		echo "$u" >>"$work/$name.untraced" && echo "$t" >>"$work/$name.traced"
		awk -v u="$u" -v t="$t" 'BEGIN {print t / u}' >>"$work/$name.ratio"
	done
}

# interval: the 5th and 95th percentiles of the median of 1000 resamples of the numbers on stdin.
interval() {
	awk 'function sort(a, n, i, j, t) {
			for (i = 2; i <= n; i++) {
				t = a[i]
				for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]
				a[j + 1] = t
			}
		}
		function median(a, n) { sort(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
		{ v[NR] = $1 }
		END {
			srand(1)
			for (b = 1; b <= 1000; b++) {
				for (i = 1; i <= NR; i++) s[i] = v[int(rand() * NR) + 1]
				m[b] = median(s, NR)
			}
			sort(m, 1000)
			printf "%.3f-%.3f", m[50], m[950]
		}'
}

pairs throughput "$bps"
fixed_rate=$(median <"$work/throughput.untraced" | awk '{printf "%.0f", $1 / 2}')
pairs cost "$cpu" -b "$fixed_rate"
if ((parts && !raw)); then
	keep_marker
	for marker in marker hooks counting; do
		arm=arm_marker disarm=disarm_marker pairs "$marker" "$cpu" -b "$fixed_rate"
	done
	arm=arm_unmarked disarm=disarm_unmarked pairs unmarked "$cpu" -b "$fixed_rate"
	arm=arm_captures disarm=disarm_captures pairs captures "$cpu" -b "$fixed_rate"
fi

# (c) probe traces under a UDP flood, from two iperf3 clients (one is
# single-threaded and tops out near 85 kpps here), each sending half.
flood_seconds=$((5 + runs / 2))
floods=()
for port in 5201 5203; do
	ip netns exec "$pod_a" iperf3 -c 172.16.1.11 -p "$port" -u -l "$flood_size" -b $((flood_pps / 2 * flood_size * 8)) \
		-t "$flood_seconds" -J >"$work/flood-$port.json" &
	floods+=($!)
	pids+=($!)
done
sleep 1
loaded=0 lost_events=0 short=0
: >"$work/lost"
while kill -0 "${floods[0]}" 2>/dev/null && ((loaded < 5)); do
	probe >"$work/c.json" 2>/dev/null
	loaded=$((loaded + 1))
	n=$(hops "$work/c.json")
	((n < baseline_hops)) && short=$((short + 1))
	jq -r '.lost[]? | "\(.source) on \(.node): \(.count): \(.detail)"' "$work/c.json" >>"$work/lost"
	lost_events=$((lost_events + $(jq '[.lost[]?.count] | add // 0' "$work/c.json")))
done
wait "${floods[@]}"
flood_rate=$(jq -s 'map(.end.sum.packets / .end.sum.seconds) | add | floor' "$work"/flood-*.json)

parts_report=
if ((parts && !raw)); then
	# ratio NAME: the median of $work/NAME.ratio and its 90 % interval.
	ratio() { echo "$(median <"$work/$1.ratio" | awk '{printf "%.3f", $1}') ($(interval <"$work/$1.ratio"))"; }
	parts_report="      CPU cost of the parts, at the same rate, traced/untraced (median of the pairs, 90 % interval):
        the nft marker alone               $(ratio marker)
          its chains' hooks alone          $(ratio hooks)
          its rules, counting, no nftrace  $(ratio counting)
        the live trace without its marker  $(ratio unmarked)
        its five captures alone            $(ratio captures)
" # ends in a newline, as it goes before (c)
fi
cat <<EOF
engine benchmark: backend $backend$( ((raw)) && echo " with a raw table"), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)
(a) time to answer, probe pod -> ClusterIP: median $(median <"$work/times") ms over $runs runs (min $(sort -n "$work/times" | head -1), max $(sort -n "$work/times" | tail -1)); goal < 300 ms
(b) untraced TCP pod -> pod through the node, ${seconds}s runs in $rounds pairs (ABBA), client and server pinned:
      without a trace   median $(median <"$work/throughput.untraced" | awk '{printf "%.0f", $1 / 1e6}') Mbit/s  (runs: $(awk '{printf "%.0f ", $1 / 1e6}' "$work/throughput.untraced"))
      live trace armed  median $(median <"$work/throughput.traced" | awk '{printf "%.0f", $1 / 1e6}') Mbit/s  (runs: $(awk '{printf "%.0f ", $1 / 1e6}' "$work/throughput.traced"))
      throughput traced/untraced: median of the pairs $(median <"$work/throughput.ratio" | awk '{printf "%.3f", $1}'), 90 % interval $(interval <"$work/throughput.ratio"); goal >= 0.99
      at a fixed $(awk -v r="$fixed_rate" 'BEGIN {printf "%.0f", r / 1e6}') Mbit/s, CPU of sender + receiver: without $(median <"$work/cost.untraced" | awk '{printf "%.1f", $1}') %, armed $(median <"$work/cost.traced" | awk '{printf "%.1f", $1}') %
      CPU cost traced/untraced: median of the pairs $(median <"$work/cost.ratio" | awk '{printf "%.3f", $1}'), 90 % interval $(interval <"$work/cost.ratio")
$parts_report(c) $loaded probe traces under $flood_rate pps of ${flood_size}-byte UDP (asked $flood_pps):
      traces with fewer hops than without load ($baseline_hops): $short
      events lost: $lost_events
EOF
sed 's/^/      /' "$work/lost"
