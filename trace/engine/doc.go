// Package engine follows one flow on one node. A Session arms the event
// sources in the node's network namespace (the netfilter tracer, conntrack,
// captures on the pod veths, the tunnel devices and the underlay NIC) and
// captures in the namespaces it watches (the pods'), collects their hops,
// and when stopped restores everything and adds the FIB lookups of the
// packet after NAT. Trace is the on-node one-shot built on a Session: it
// finds the source pod, plans and sends a probe (or waits for live
// traffic), and correlates the hops into a trace.Path. docs/engine.md
// describes how a trace runs.
package engine
