package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
)

// NetConf is the network configuration of nettrace-cni.
type NetConf struct {
	types.PluginConf
	// Kubeconfig is the path of the kubeconfig of the IPAM datastore.
	Kubeconfig string `json:"kubeconfig"`
	// NodeName is the node's name in the datastore.
	NodeName string `json:"nodename"`
	// Pool is the name or the CIDR of the IPPool that pods take addresses from.
	Pool string `json:"pool"`
	// Encapsulation is how the pool's traffic crosses nodes; it decides the
	// MTU overhead.
	Encapsulation ipam.Encapsulation `json:"encapsulation"`
	// MTU is the pod MTU; 0 derives it from the default route's interface.
	MTU int `json:"mtu"`
	// Attachments is the spelling of cni.dev/valid-attachments that the
	// first drafts of spec 1.1 used; libcni sends both.
	Attachments []types.GCAttachment `json:"cni.dev/attachments"`
}

// knownFields are the fields a configuration may have: the ones the spec
// defines for every plugin, and ours.
var knownFields = []string{
	"cniVersion", "name", "type", "capabilities", "ipam", "dns", "args", "runtimeConfig", "prevResult",
	"cni.dev/valid-attachments", "cni.dev/attachments",
	"kubeconfig", "nodename", "pool", "encapsulation", "mtu",
}

// The limits of a pod MTU: the IPv4 minimum, and the largest a veth takes.
const (
	minMTU = 68
	maxMTU = 65535
)

// loadConf parses and validates the network configuration, filling in the
// defaults. Its errors are CNI errors with the spec's codes.
func loadConf(data []byte) (*NetConf, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decoding the network configuration: %v", err), "")
	}
	for _, key := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(knownFields, key) {
			return nil, types.NewError(types.ErrUnsupportedField,
				fmt.Sprintf("unsupported field %q: %s", key, fields[key]), "")
		}
	}
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("field %q is a JSON %s, want a %s", typeErr.Field, typeErr.Value, jsonKind(typeErr.Type)), "")
		}
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("decoding the network configuration: %v", err), "")
	}
	if conf.Kubeconfig == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `field "kubeconfig" is required: the path of the kubeconfig of the IPAM datastore`, "")
	}
	if conf.NodeName == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(`field "nodename" is empty and the hostname is unknown: %v`, err), "")
		}
		conf.NodeName = strings.ToLower(host)
	}
	if conf.Pool == "" {
		conf.Pool = ipam.DefaultPoolName
	}
	switch conf.Encapsulation {
	case "":
		conf.Encapsulation = ipam.IPIP
	case ipam.IPIP, ipam.VXLAN, ipam.NoEncap:
	default:
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf(`field "encapsulation" is %q, want "ipip", "vxlan" or "none"`, conf.Encapsulation), "")
	}
	if conf.MTU != 0 && (conf.MTU < minMTU || conf.MTU > maxMTU) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf(`field "mtu" is %d, want %d to %d (or absent to derive it)`, conf.MTU, minMTU, maxMTU), "")
	}
	return conf, nil
}

// validAttachments is the set of container IDs that GC must keep, and
// whether the runtime sent the list at all.
func (c *NetConf) validAttachments() (map[string]bool, bool) {
	if c.ValidAttachments == nil && c.Attachments == nil {
		return nil, false
	}
	keep := make(map[string]bool)
	for _, a := range append(c.ValidAttachments, c.Attachments...) {
		keep[a.ContainerID] = true
	}
	return keep, true
}

// encapOverhead is the number of bytes the encapsulation adds to a packet.
func encapOverhead(e ipam.Encapsulation) int {
	switch e {
	case ipam.IPIP:
		return 20
	case ipam.VXLAN:
		return 50
	}
	return 0
}

// podArgs is who the pod is, from CNI_ARGS.
type podArgs struct {
	Namespace string
	Name      string
}

// loadPodArgs reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS
// ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;...").
func loadPodArgs(cniArgs string) (podArgs, error) {
	var p podArgs
	for pair := range strings.SplitSeq(cniArgs, ";") {
		if pair == "" {
			continue
		}
		key, value, ok := strings.Cut(pair, "=")
		if !ok {
			return podArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", pair), "")
		}
		switch key {
		case "K8S_POD_NAMESPACE":
			p.Namespace = value
		case "K8S_POD_NAME":
			p.Name = value
		}
	}
	if p.Namespace == "" || p.Name == "" {
		return podArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME: the host veth is named after the pod", "")
	}
	return p, nil
}

// jsonKind names the JSON type that decodes into t.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.Slice, reflect.Array:
		return "array"
	}
	return "object"
}
