// Package deploy holds the project's Kubernetes manifests and embeds them, so
// that the lab applies exactly the files a user would apply to a cluster.
//
//   - crds/: the custom resources (IPAM datastore, NetTrace).
//   - lab/:  the objects the lab adds to a fresh cluster: RBAC for the node
//     daemons, the IP pool, and the cluster DNS.
package deploy

import "embed"

// Files holds crds/*.yaml and lab/*.yaml.
//
//go:embed crds/*.yaml lab/*.yaml
var Files embed.FS
