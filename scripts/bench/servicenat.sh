#!/usr/bin/env bash
# Benchmarks the service NAT (dataplane/servicenat, needs root): with 5
# endpoints per service,
#   - rule generation for SERVICES services (default 10,000);
#   - per iptables backend, a full sync (generation, jump checks,
#     iptables-save, iptables-restore --noflush) and a partial sync after one
#     service's endpoints changed, in a throwaway network namespace, with the
#     partial/full ratio measured in the same run.
# The nft backend runs NFT_SERVICES services (default 1,000): iptables-nft-
# restore --noflush 1.8.9 grows much faster than linearly with the number of
# chains (about 8 s for 1,000 services, a minute for 2,000 on a 2-core box).
# Nothing here is a pass/fail.
set -euo pipefail
cd "$(dirname "$0")/../.."

services=${SERVICES:-10000}
nft_services=${NFT_SERVICES:-1000}

out=$(go test -count=1 -timeout 60m -run '^$' -bench '^BenchmarkSync$' -benchtime "${BENCHTIME:-3x}" \
	./dataplane/servicenat/ -args -bench-services="$services" -bench-nft-services="$nft_services" |
	grep -E '^(Benchmark|ok|FAIL)')
echo "$out"
echo
echo "$out" | awk '
	/^BenchmarkSync\// {
		name = $1
		sub(/^BenchmarkSync\//, "", name)
		sub(/-[0-9]+$/, "", name)
		printf "%-32s %10.1f ms\n", name, $3 / 1e6
		n = split(name, part, "/")
		if (part[2] == "full") full[part[1]] = $3
		if (part[2] == "partial") partial[part[1]] = $3
	}
	END {
		for (b in full) if (b in partial)
			printf "%-32s %10.3f\n", b " partial/full", partial[b] / full[b]
	}'
