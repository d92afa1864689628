#!/usr/bin/env bash
# Benchmarks nettrace-cni against the test API server (needs root and the
# control plane built by `make controlplane`):
#   - CNI ADD latency p50/p99 over 200 pods added through libcni on one node,
#     with their ratio to the exec of the plugin's VERSION command;
#   - the IPAM allocation rate of one node, with the cost of one allocation
#     as a multiple of one API round trip.
# Both baselines are measured in the same run; nothing here is a pass/fail.
set -euo pipefail
cd "$(dirname "$0")/../.."

go test -count=1 -run '^$' -bench '^BenchmarkAdd200Pods$' -benchtime 1x ./dataplane/cni/ |
	grep -E '^(Benchmark|ok|FAIL)'
go test -count=1 -run '^$' -bench '^BenchmarkAssign$' -benchtime 500x ./dataplane/ipam/ |
	grep -E '^(Benchmark|ok|FAIL)'
