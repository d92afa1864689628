package engine

import (
	"io"
	"slices"

	"github.com/kubectl-nettrace/nettrace/capture/decode"
	"github.com/kubectl-nettrace/nettrace/capture/pcapng"
	"github.com/kubectl-nettrace/nettrace/trace"
)

// WritePcap writes the packets the session captured to w as one pcapng
// section: an interface per capture, named "node/iface" in the node's
// namespace and "node/label/iface" in a watched one, and the packets in time
// order, each commented with its hop annotation. When path is given, a
// packet that is a hop of the path says which direction it belongs to
// ("request: tcp 172.16.0.5:40001 > …"). pcapng.Merge joins the files of
// several nodes.
func (c *Collected) WritePcap(w io.Writer, path *trace.Path) error {
	type seen struct {
		netns, iface string
		at           int64
	}
	directions := map[seen]trace.Direction{}
	if path != nil {
		for _, h := range path.Hops {
			if h.Source == decode.Source && h.Node == c.Node {
				directions[seen{h.Netns, h.Iface, h.Time.UnixNano()}] = h.Direction
			}
		}
	}
	pw, err := pcapng.NewWriter(w)
	if err != nil {
		return err
	}
	var packets []pcapng.Packet
	for _, nc := range c.captures {
		i := nc.Interface()
		if nc.label != "" {
			i.Name = nc.node + "/" + nc.label + "/" + nc.iface
		}
		id, err := pw.AddInterface(i)
		if err != nil {
			return err
		}
		for _, p := range nc.Packets(id) {
			if d, ok := directions[seen{nc.label, nc.iface, p.Time.UnixNano()}]; ok {
				p.Comment = string(d) + ": " + p.Comment
			}
			packets = append(packets, p)
		}
	}
	slices.SortStableFunc(packets, func(a, b pcapng.Packet) int { return a.Time.Compare(b.Time) })
	for _, p := range packets {
		if err := pw.WritePacket(p); err != nil {
			return err
		}
	}
	return pw.Flush()
}
