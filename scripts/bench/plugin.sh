#!/usr/bin/env bash
# Wall time of `kubectl nettrace client svc/nginx-test` across nodes (the client
# on k8s-w1, nginx-test's endpoints on both workers), p50 and p90 over RUNS
# runs (20), against the lab that is up (make lab). Goal: p50 under 1 s. The
# baseline, measured in the same run, is a plain `kubectl get svc nginx-test`
# (one API round trip from the same host), so the ratio is what a trace costs
# in API round trips.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-20}
kubeconfig=$("$root/bin/nettrace-lab" kubeconfig) || { echo "the lab is not up: make lab" >&2; exit 1; }
plugin=("$root/bin/kubectl-nettrace" --kubeconfig "$kubeconfig")
kubectl=("$root/.cache/controlplane/kubectl" --kubeconfig "$kubeconfig")

# time_runs CMD... prints one wall time in seconds per run.
time_runs() {
	for _ in $(seq "$runs"); do
		local start end
		start=$(date +%s.%N)
		"$@" >/dev/null
		end=$(date +%s.%N)
		awk -v a="$start" -v b="$end" 'BEGIN {print b - a}'
	done
}
# quantile Q: the Q-quantile of the numbers on stdin.
quantile() { sort -n | awk -v q="$1" '{a[NR]=$1} END {i=int(q*NR+0.999); if (i<1) i=1; print a[i]}'; }

trace_times=$(time_runs "${plugin[@]}" client svc/nginx-test)
base_times=$(time_runs "${kubectl[@]}" get svc nginx-test)
t50=$(quantile 0.5 <<<"$trace_times")
t90=$(quantile 0.9 <<<"$trace_times")
b50=$(quantile 0.5 <<<"$base_times")
printf 'kubectl nettrace client svc/nginx-test, %d runs: p50 %.3f s, p90 %.3f s (goal: p50 < 1 s, ratio to goal %.2f)\n' \
	"$runs" "$t50" "$t90" "$(awk -v t="$t50" 'BEGIN {print t / 1}')"
printf 'baseline kubectl get svc nginx-test: p50 %.3f s; trace / baseline %.1f\n' \
	"$b50" "$(awk -v t="$t50" -v b="$b50" 'BEGIN {print t / b}')"
