// Command nettrace-cni is the CNI plugin of the nettrace reference dataplane;
// see package dataplane/cni. The runtime runs it with CNI_COMMAND set and the
// network configuration on stdin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/kubectl-nettrace/nettrace/dataplane/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.PluginInfo, cni.About)
}
