#!/usr/bin/env bash
# Benchmarks the reference service NAT (dataplane/servicenat) against the
# real kube-proxy v1.37.2 in iptables mode (needs root and the control plane
# built by `make controlplane`). Each runs in its own throwaway network
# namespace, one after the other, against the same test API server holding
# SERVICES services of 5 endpoints (default 10,000) for the legacy backend
# and NFT_SERVICES (default 1,000) for the nft backend, whose
# iptables-nft-restore --noflush (1.8.9) grows much faster than linearly with
# the number of chains, for kube-proxy's input as for the reference's.
# Both run with the lab's options (no localhost NodePorts). Printed, for both
# and with the ratio reference/kube-proxy, medians over BENCHTIME (default
# 3x) starts of each, 3 partial syncs per start:
#   - startup: from start to the first complete sync (goal: ratio <= 1);
#   - the full sync alone;
#   - a partial sync after one service's endpoints changed (goal for the
#     reference: < 50 ms), and from that API update to the rules in place.
# Both rulesets are compared after the full syncs and must be equal. Nothing
# here is timed pass/fail. Everything the run creates (network namespaces,
# processes, the test API server) is removed on exit, even on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

services=${SERVICES:-10000}
nft_services=${NFT_SERVICES:-1000}
benchtime=${BENCHTIME:-3x}

work=$(mktemp -d)
netns_before=$(ip netns list | awk '{print $1}')
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	# The namespaces of this run: the benchmark's nodes and its API server's.
	for n in $(ip netns list | awk '{print $1}'); do
		case "$n" in
		snat-test-*) grep -qx "$n" <<<"$netns_before" || ip netns del "$n" ;;
		"nt-apitest-$pid") ip netns del "$n" ;;
		esac
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go test -c -o "$work/servicenat.test" ./dataplane/servicenat/
# TMPDIR: the API server's and kube-proxy's files go into $work too.
(cd dataplane/servicenat && exec env TMPDIR="$work" "$work/servicenat.test" \
	-test.run '^$' -test.bench '^BenchmarkVersusKubeProxy$' -test.benchtime "$benchtime" -test.timeout 120m \
	-bench-services="$services" -bench-nft-services="$nft_services") >"$work/out" 2>&1 &
pid=$!
status=0
wait "$pid" || status=$?
grep -E '^(Benchmark|ok|FAIL|---|    )' "$work/out" || true
if [ "$status" -ne 0 ]; then
	tail -50 "$work/out"
	exit "$status"
fi
echo
awk '
	/^BenchmarkVersusKubeProxy\// {
		name = $1
		sub(/^BenchmarkVersusKubeProxy\//, "", name)
		sub(/-[0-9]+$/, "", name)
		for (i = 3; i < NF; i += 2) m[$(i + 1)] = $i
		printf "%s (%d rules, %d differing)\n", name, m["rules"], m["rules-differing"]
		printf "  %-34s %12s %12s %8s\n", "", "reference", "kube-proxy", "ratio"
		row("start to first complete sync", m["ref-startup-s"], m["kp-startup-s"], "s")
		row("full sync alone", m["ref-full-s"], m["kp-full-s"], "s")
		row("partial sync alone", m["ref-partial-ms"], m["kp-partial-ms"], "ms")
		row("API update to rules in place", m["ref-update-ms"], m["kp-update-ms"], "ms")
	}
	function row(what, ref, kp, unit) {
		printf "  %-34s %10.3f %s %10.3f %s %8.3f\n", what, ref, unit, kp, unit, (kp > 0 ? ref / kp : 0)
	}' "$work/out"
