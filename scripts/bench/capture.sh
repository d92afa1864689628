#!/usr/bin/env bash
# Benchmarks the capture package against `tcpdump -w` (needs root, iperf3 and
# tcpdump). Two throwaway netns are joined by a veth pair; iperf3 sends 64-byte
# UDP datagrams at increasing rates and then as fast as it can, while either
# tool captures the flow on the sender's veth with the same filter (UDP port
# 5201), snap length (128 bytes) and kernel buffer (4 MiB). For each run it
# prints the packets captured and dropped, then for each tool the highest rate
# captured without drops, and the ratios capture/tcpdump. Both are measured in
# the same run on the same load; nothing here is a pass/fail.
#
#   scripts/bench/capture.sh [seconds per run]
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-3}
rates=(20000 50000 100000 200000 400000 0) # packets per second; 0 is unlimited
payload=64
ring_kib=${RING_KIB:-256}
snaplen=128
ns_a=nettrace-bench-capture-$$-a
ns_b=nettrace-bench-capture-$$-b
work=$(mktemp -d)
server= tool= # background processes to stop on exit

cleanup() {
	for pid in $tool $server; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	ip netns del "$ns_a" 2>/dev/null || true
	ip netns del "$ns_b" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/capturebench" ./capture/internal/capturebench

ip netns add "$ns_a"
ip netns add "$ns_b"
ip -n "$ns_a" link add a0 type veth peer name b0 netns "$ns_b"
ip -n "$ns_a" addr add 10.77.0.1/24 dev a0
ip -n "$ns_b" addr add 10.77.0.2/24 dev b0
ip -n "$ns_a" link set a0 up
ip -n "$ns_b" link set b0 up
ip -n "$ns_a" link set lo up
ip -n "$ns_b" link set lo up
ip netns exec "$ns_b" iperf3 -s -B 10.77.0.2 >/dev/null 2>&1 &
server=$!
sleep 0.5

# load RATE: one iperf3 run from a to b.
load() {
	local bits=$(($1 * payload * 8))
	ip netns exec "$ns_a" iperf3 -c 10.77.0.2 -u -l "$payload" -b "$bits" -t "$seconds" >/dev/null 2>&1 ||
		echo "iperf3 failed at rate $1" >&2
}

# wait_for FILE: wait until a tool says it captures.
wait_for() {
	for _ in $(seq 100); do
		[[ -e $1 ]] && return 0
		sleep 0.05
	done
	echo "capture did not start" >&2
	return 1
}

# stop_tool: interrupts the capturing tool and waits for its summary.
stop_tool() {
	kill -INT "$tool"
	wait "$tool" || true
	tool=
}

# run_tcpdump RATE: sets captured and dropped.
run_tcpdump() {
	rm -f "$work/tcpdump.err"
	ip netns exec "$ns_a" tcpdump -i a0 -n -Z root -s "$snaplen" -B "$ring_kib" -w "$work/tcpdump.pcap" \
		udp port 5201 2>"$work/tcpdump.err" &
	tool=$!
	for _ in $(seq 100); do
		grep -q listening "$work/tcpdump.err" 2>/dev/null && break
		sleep 0.05
	done
	load "$1"
	sleep 0.2
	stop_tool
	captured=$(awk '/packets captured/ {print $1}' "$work/tcpdump.err")
	dropped=$(awk '/dropped by kernel/ {print $1}' "$work/tcpdump.err")
}

# run_capture RATE: sets captured and dropped.
run_capture() {
	rm -f "$work/started"
	"$work/capturebench" -netns "/run/netns/$ns_a" -iface a0 -proto udp -port 5201 \
		-ring $((ring_kib * 1024)) -snaplen "$snaplen" -w "$work/capture.pcapng" \
		-started "$work/started" >"$work/capture.out" &
	tool=$!
	wait_for "$work/started"
	load "$1"
	sleep 0.2
	stop_tool
	read -r _ captured _ dropped _ <"$work/capture.out"
}

best_tcpdump=0 best_capture=0 flood_tcpdump=0 flood_capture=0
printf '%-10s %14s %14s %14s %14s\n' rate/s tcpdump-capt tcpdump-drop capture-capt capture-drop
for rate in "${rates[@]}"; do
	run_tcpdump "$rate"
	t_capt=${captured:-0} t_drop=${dropped:-0}
	run_capture "$rate"
	c_capt=${captured:-0} c_drop=${dropped:-0}
	label=$rate
	[[ $rate == 0 ]] && label=flood
	printf '%-10s %14d %14d %14d %14d\n' "$label" "$t_capt" "$t_drop" "$c_capt" "$c_drop"
	# The rate achieved is what reached the socket: captured plus dropped.
	t_rate=$(((t_capt + t_drop) / seconds))
	c_rate=$(((c_capt + c_drop) / seconds))
	if ((t_drop == 0 && t_rate > best_tcpdump)); then best_tcpdump=$t_rate; fi
	if ((c_drop == 0 && c_rate > best_capture)); then best_capture=$c_rate; fi
	if [[ $rate == 0 ]]; then
		flood_tcpdump=$((t_capt / seconds))
		flood_capture=$((c_capt / seconds))
	fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }'; }
echo
echo "highest rate without drops: tcpdump ${best_tcpdump}/s, capture ${best_capture}/s," \
	"ratio capture/tcpdump $(ratio "$best_capture" "$best_tcpdump")"
echo "captured under flood:       tcpdump ${flood_tcpdump}/s, capture ${flood_capture}/s," \
	"ratio capture/tcpdump $(ratio "$flood_capture" "$flood_tcpdump")"
