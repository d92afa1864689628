#!/usr/bin/env bash
# Time from `nettrace-lab up --with-examples` (binaries already built) to every
# example pod Running, for a fresh 3-node lab. Target: under 60 s. The lab is
# brought down before and after, so run it when no lab is up.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lab="$root/bin/nettrace-lab"
runs=${RUNS:-3}

if "$lab" status >/dev/null 2>&1; then
	echo "a lab is up: bring it down first (bin/nettrace-lab down)" >&2
	exit 1
fi
trap '"$lab" down >/dev/null 2>&1 || true' EXIT

times=()
for i in $(seq "$runs"); do
	start=$(date +%s.%N)
	"$lab" up --with-examples >/dev/null
	end=$(date +%s.%N)
	t=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
	times+=("$t")
	printf 'run %d: up to all example pods Running: %.1f s\n' "$i" "$t"
	"$lab" down >/dev/null
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'lab up, 3 nodes, median of %d: %.1f s; target 60 s; ratio to target %.2f (below 1.00 meets it)\n' \
	"$runs" "$median" "$(awk -v m="$median" 'BEGIN {print m / 60}')"
