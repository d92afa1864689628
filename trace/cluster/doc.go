// Package cluster traces a flow across a Kubernetes cluster. A trace is a
// NetTrace, a namespaced custom resource of the group nettrace.dev
// (deploy/crds/nettrace.yaml): its spec names the source pod, the target as
// given and as resolved, the flow and the nodes involved; its status holds
// the phase, the planned flow, what the probe got back, and each node's
// hops as trace.Hop. The package has the Go types and a client for them,
// the parsing and resolution of `kubectl nettrace SOURCE TARGET`, and Run,
// which creates a NetTrace, waits for the agents of trace/agent to arm,
// probe and report, and correlates their hops into one trace.Path.
// docs/architecture.md describes the protocol.
package cluster
