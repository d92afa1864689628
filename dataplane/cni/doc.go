// Package cni is nettrace-cni, the reference CNI plugin of the nettrace
// dataplane: Calico-like pod networking (a /32 per pod behind a veth whose
// host side answers ARP for the pod's gateway by proxy) on the block IPAM of
// package ipam. It speaks CNI spec 0.3.0 to 1.1.0 through skel: ADD, DEL,
// CHECK, GC, STATUS and VERSION.
//
// The network configuration (type "nettrace-cni") takes, besides the
// standard CNI fields:
//
//	kubeconfig     path of the kubeconfig that reaches the IPAM datastore (required)
//	nodename       the node's name in the datastore (default: the hostname)
//	pool           an IPPool name or CIDR (default "default-ipv4-ippool")
//	encapsulation  "ipip", "vxlan" or "none" (default "ipip"); sets the MTU overhead
//	mtu            the pod MTU (default: the MTU of the interface of the default
//	               route, less 20 for ipip or 50 for vxlan)
//
// Any other field is refused with error code 2. The pod's namespace and name
// come from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME), as containerd and
// CRI-O pass them.
//
// A pod gets, in its netns, CNI_IFNAME (eth0) with its address as a /32, a
// route to 169.254.1.1 on eth0 and the default route via 169.254.1.1. The
// host side, in the netns the plugin runs in (the node's), is the veth
// cali<first 11 hex digits of sha1("<namespace>.<pod>")> with MAC
// ee:ee:ee:ee:ee:ee, proxy ARP on and the route <pod address>/32 to it.
package cni
