package cluster

import (
	"encoding/json"
	"fmt"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// MaxStatusBytes bounds the JSON of a NetTrace's status, well below the
// 1.5 MiB that etcd accepts for a whole object.
const MaxStatusBytes = 1 << 20

// NodeBudget is the JSON size that each node's entry may take in a trace
// of nodes nodes.
func NodeBudget(nodes int) int { return MaxStatusBytes / max(nodes, 1) }

// StatusSource is the Source of the losses that Fit reports.
const StatusSource = "status"

// Fit trims e to at most budget bytes of JSON. It leaves out the pcap
// first, then the last hops, and reports each as a loss of the node, so
// that the path says it has a gap.
func (e *NodeStatus) Fit(budget int) {
	if jsonSize(e) <= budget {
		return
	}
	if len(e.Pcap) > 0 {
		size := len(e.Pcap)
		e.Pcap = nil
		e.Losses = append(e.Losses, trace.Loss{Node: e.Node, Source: StatusSource, Count: 1,
			Detail: fmt.Sprintf("the pcap of %d bytes was left out: the NetTrace status would be too large", size)})
		if jsonSize(e) <= budget {
			return
		}
	}
	// Count the room left for hops with everything else, its loss included.
	hops, total := e.Hops, len(e.Hops)
	e.Hops = nil
	e.Losses = append(e.Losses, trace.Loss{Node: e.Node, Source: StatusSource, Count: total,
		Detail: lossDetail(total, total, budget)})
	room := budget - jsonSize(e)
	kept := 0
	for _, h := range hops {
		size := jsonSize(h) + 1 // and its comma
		if size > room {
			break
		}
		room -= size
		kept++
	}
	e.Hops = hops[:kept]
	loss := &e.Losses[len(e.Losses)-1]
	loss.Count, loss.Detail = total-kept, lossDetail(total-kept, total, budget)
}

func lossDetail(left, total, budget int) string {
	return fmt.Sprintf("the last %d of %d hops were left out to keep the NetTrace status under %d KiB",
		left, total, budget>>10)
}

// jsonSize is the length of v's JSON encoding.
func jsonSize(v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return len(b)
}
