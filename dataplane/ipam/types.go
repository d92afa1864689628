package ipam

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and Version name the API of the IPAM resources.
const (
	Group   = "nettrace.dev"
	Version = "v1alpha1"
)

// The resources of the IPAM datastore; all are cluster-scoped.
var (
	PoolResource   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "ippools"}
	BlockResource  = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "ipamblocks"}
	HandleResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "ipamhandles"}
)

// Encapsulation says how pod traffic between nodes is carried.
type Encapsulation string

// The encapsulations a pool can ask for.
const (
	IPIP    Encapsulation = "ipip"
	VXLAN   Encapsulation = "vxlan"
	NoEncap Encapsulation = "none"
)

// IPPool is a range of pod addresses, handed to nodes in blocks.
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              IPPoolSpec `json:"spec"`
}

// IPPoolSpec is the range of a pool and how it is cut.
type IPPoolSpec struct {
	// CIDR is the pool's IPv4 network, such as 172.16.0.0/16.
	CIDR string `json:"cidr"`
	// BlockSize is the prefix length of the pool's blocks.
	BlockSize     int           `json:"blockSize"`
	Encapsulation Encapsulation `json:"encapsulation,omitempty"`
}

// IPAMBlock is one block of a pool. Its name is its CIDR with dots and the
// slash turned into dashes (172-16-116-0-24).
type IPAMBlock struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              IPAMBlockSpec `json:"spec"`
}

// IPAMBlockSpec is the state of a block's addresses.
type IPAMBlockSpec struct {
	CIDR string `json:"cidr"`
	// Pool is the name of the IPPool the block belongs to.
	Pool string `json:"pool"`
	// Affinity is "host:<node>" for the node that claimed the block.
	Affinity string `json:"affinity,omitempty"`
	// Free holds the free ordinals (offsets into CIDR) in the order they
	// will be handed out.
	Free []int `json:"free"`
	// Allocations holds the ordinals in use, sorted by ordinal.
	Allocations []Allocation `json:"allocations,omitempty"`
}

// AllocationKind says what an address is used for.
type AllocationKind string

// The uses of an address.
const (
	PodAddress    AllocationKind = "pod"
	TunnelAddress AllocationKind = "tunnel"
)

// Allocation is one address of a block in use.
type Allocation struct {
	Ordinal int `json:"ordinal"`
	// Handle is the container ID, or tunnel.<node>.
	Handle string         `json:"handle"`
	Kind   AllocationKind `json:"kind"`
	// Node is the node the address was assigned on; it differs from the
	// block's affinity when the address was borrowed.
	Node      string      `json:"node"`
	Namespace string      `json:"namespace,omitempty"`
	Pod       string      `json:"pod,omitempty"`
	Since     metav1.Time `json:"since"`
}

// IPAMHandle records where the address of one handle lives. Its name is the
// handle made into a valid object name (see HandleName).
type IPAMHandle struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              IPAMHandleSpec `json:"spec"`
}

// IPAMHandleSpec points a handle at its block and ordinal.
type IPAMHandleSpec struct {
	// HandleID is the handle exactly as given: a container ID or tunnel.<node>.
	HandleID string `json:"handleID"`
	// Block is the CIDR of the block holding the address.
	Block   string `json:"block"`
	Ordinal int    `json:"ordinal"`
	Node    string `json:"node"`
}
