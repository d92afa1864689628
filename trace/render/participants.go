package render

import (
	"strconv"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// participant is a lifeline of a sequence diagram: the client (when it is
// a pod, not a node itself), each node, and the destination it was
// delivered to.
type participant struct {
	id, label string
}

// cast is the participants of a path and which line belongs to which.
type cast struct {
	participants []participant
	of           []int // participant index of each line
}

// castOf places the lines of a path on their participants. The client is
// the netns of the first request hop; the destination is the netns (or, on
// a host veth, the deliver hop) where the request was delivered.
func castOf(p trace.Path, ls []line) cast {
	var c cast
	index := map[string]int{}
	add := func(key, label string) int {
		if i, ok := index[key]; ok {
			return i
		}
		index[key] = len(c.participants)
		c.participants = append(c.participants, participant{id: "p" + strconv.Itoa(len(c.participants)), label: label})
		return index[key]
	}
	type stack struct{ node, netns string }
	var client, dest stack
	if len(p.Hops) > 0 && p.Hops[0].Netns != "" {
		client = stack{p.Hops[0].Node, p.Hops[0].Netns}
		add("client", client.netns+" "+p.Flow.Src.String())
	}
	destLabel := ""
	for _, h := range p.Hops {
		if h.Kind == trace.HopDeliver {
			dest = stack{h.Node, h.Netns}
			destLabel = strings.TrimPrefix(h.Note, "delivered to ")
			if h.Packet != nil {
				destLabel += " " + h.Packet.Dst.String()
			}
		}
	}
	for _, n := range p.Nodes {
		add("node "+n, n)
	}
	for _, l := range ls {
		h := l.first()
		var i int
		switch s := (stack{h.Node, h.Netns}); {
		case client.netns != "" && s == client:
			i = index["client"]
		case h.Kind == trace.HopDeliver || dest.netns != "" && s == dest:
			i = add("destination", destLabel)
		default:
			i = add("node "+h.Node, h.Node)
		}
		c.of = append(c.of, i)
	}
	return c
}
