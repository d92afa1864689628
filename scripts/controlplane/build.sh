#!/usr/bin/env bash
# Builds the lab's control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl) from the modules pinned in this folder's
# go.mod, into OUT (default: ../../.cache/controlplane). A binary already in OUT
# from the same go.sum is kept, so a second run costs nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.cache/controlplane}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp=$(sha256sum "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)

version=v1.37.2
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$version"

declare -A pkgs=(
	[etcd]=./cmd/etcd
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
	[kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
	[kubectl]=k8s.io/kubernetes/cmd/kubectl
)

cd "$here"
for name in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
	if [ -x "$out/$name" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
		continue
	fi
	echo "building $name (a cold build of the whole control plane takes about 7 minutes)" >&2
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "${pkgs[$name]}"
	mv "$out/$name.tmp" "$out/$name"
	echo "$stamp" >"$out/$name.stamp"
done
