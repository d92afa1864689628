//go:build tools

// Package controlplane pins the Kubernetes control-plane commands that the
// lab builds from source. The blank imports keep their packages in go.sum;
// the binaries themselves are built by build.sh.
package controlplane

import (
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
)
