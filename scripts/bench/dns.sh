#!/usr/bin/env bash
# Compares nettrace-dns with CoreDNS under dnsperf (needs root, dnsperf and the
# control plane built by `make controlplane`). Both servers run on loopback in
# the same run, against the same test API server and the same upstream, with
# the zone settings of the lab's kube-dns (kubernetes with pods insecure and
# ttl 30, forward, cache 30). CoreDNS runs without its prometheus plugin, while
# nettrace-dns always counts requests. The benchmark prints the QPS of each for
# cluster names and for cached forwarded names, and the ratio
# nettrace-dns / CoreDNS.
#
# CoreDNS is built once, with only the kubernetes, forward and cache plugins,
# from the Go module github.com/coredns/coredns in a temporary module outside
# the repository, into .cache/coredns/ (git-ignored). Nothing here is a
# pass/fail: the ratio is information.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
coredns_version=v1.15.0
out=$root/.cache/coredns
mkdir -p "$out"

stamp=$(echo "$coredns_version" | cat - "$0" | sha256sum | cut -c1-16)
if [ ! -x "$out/coredns" ] || [ "$(cat "$out/coredns.stamp" 2>/dev/null)" != "$stamp" ]; then
	echo "building CoreDNS $coredns_version (a few minutes cold)" >&2
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	cat >"$work/main.go" <<'EOF'
// Command coredns is CoreDNS with only the plugins the comparison uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func init() {
	// The order in which CoreDNS runs the plugins, as in its plugin.cfg.
	dnsserver.Directives = []string{"bind", "cache", "kubernetes", "forward"}
}

func main() {
	coremain.Run()
}
EOF
	if ! (
		cd "$work"
		go mod init corednsbench &&
			go get "github.com/coredns/coredns@$coredns_version" &&
			go mod tidy &&
			CGO_ENABLED=0 go build -trimpath -o "$out/coredns.tmp" .
	) >"$work/build.log" 2>&1; then
		cat "$work/build.log" >&2
		exit 1
	fi
	mv "$out/coredns.tmp" "$out/coredns"
	echo "$stamp" >"$out/coredns.stamp"
fi

go build -o "$out/nettrace-dns" ./cmd/nettrace-dns

NETTRACE_COREDNS="$out/coredns" NETTRACE_DNS="$out/nettrace-dns" \
	go test -count=1 -run '^$' -bench '^BenchmarkVersusCoreDNS$' -benchtime 1x ./cmd/nettrace-dns/ |
	grep -E '^(Benchmark|ok|FAIL|dnsperf)'
