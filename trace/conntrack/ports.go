package conntrack

import (
	"fmt"

	ct "github.com/ti-mo/conntrack"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// PortsInUse returns the ports that the conntrack entries of proto in the
// current netns use on either side, before or after NAT; for ICMP, the echo
// identifiers. A probe avoids them so that its flow is the only one with
// its port.
func PortsInUse(proto trace.Proto) (map[uint16]bool, error) {
	c, err := ct.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	defer c.Close()
	entries, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack table: %w", err)
	}
	used := map[uint16]bool{}
	for _, e := range entries {
		original, reply, err := Tuples(e)
		if err != nil || original.Proto != proto {
			continue
		}
		for _, end := range []trace.Endpoint{original.Src, original.Dst, reply.Src, reply.Dst} {
			if end.Port() != 0 {
				used[end.Port()] = true
			}
		}
	}
	return used, nil
}
