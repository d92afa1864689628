// Package deploy holds the project's Kubernetes manifests and embeds them, so
// that the lab applies exactly the files a user would apply to a cluster.
//
//   - crds/:  the custom resources (IPAM datastore, NetTrace).
//   - agent/: the node agent of kubectl nettrace: its RBAC, and the
//     DaemonSet that runs it in a real cluster (the lab runs the agents as
//     node processes and applies only the RBAC).
//   - lab/:   the objects the lab adds to a fresh cluster: RBAC for the node
//     daemons and the cluster DNS.
package deploy

import "embed"

// Files holds crds/*.yaml, agent/*.yaml and lab/*.yaml.
//
//go:embed crds/*.yaml agent/*.yaml lab/*.yaml
var Files embed.FS
