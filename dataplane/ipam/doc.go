// Package ipam is the block IPAM of nettrace-cni, with the Kubernetes API as
// its datastore, in the manner of Calico's KDD mode.
//
// An IPPool (172.16.0.0/16 by default) is cut into blocks of BlockSize (26 by
// default). A node claims a free block when it needs addresses by creating
// its IPAMBlock, so that of two nodes racing for the same block exactly one
// wins (the other sees AlreadyExists and looks again). Each block keeps an
// ordered free list: addresses are handed out from its front and come back
// at its end. Ordinal 0 of every claimed block is reserved for the claiming
// node's tunnel (tunl0 gets the first address of the node's first block).
// Only when no block is left to claim does a node borrow an address from
// another node's block.
//
// Every address is held by a handle: the container ID for a pod, or
// tunnel.<node> for a tunnel address. An IPAMHandle maps the handle to its
// block and ordinal, so that releasing a container releases exactly its
// address. All writes are compare-and-swap on resourceVersion and are retried
// on Conflict.
//
// The custom resource definitions live in deploy/crds/ipam.yaml.
package ipam
