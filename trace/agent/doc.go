// Package agent is the node agent of cluster-wide traces: one runs on each
// node, watches the NetTraces (trace/cluster) that involve its node, and
// runs the node's part of each. The source node's agent checks the
// request, finds the source pod's network namespace, plans the probe and
// publishes the flow; every involved agent then arms a trace/engine
// Session for it; the source agent sends the probe once all are armed (or
// the arm timeout passed) and reports what came back; each agent then
// stops its session, restoring the node, and writes its hops into the
// NetTrace's status. Sessions are stopped as well when a trace is deleted
// or times out, or the agent is stopped. Every agent also deletes the
// NetTraces that outlived their timeout. docs/architecture.md describes
// the protocol.
package agent
