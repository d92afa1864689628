package capture

import (
	"io"
	"slices"

	"github.com/kubectl-nettrace/nettrace/capture/pcapng"
)

// WriteFile writes the kept packets of closed captures (typically those of
// one node) to w as one pcapng section: an interface per capture, named
// "node/interface", and the packets ordered by time, each with its hop
// annotation as comment. pcapng.Merge joins the files of several nodes.
func WriteFile(w io.Writer, captures ...*Capture) error {
	pw, err := pcapng.NewWriter(w)
	if err != nil {
		return err
	}
	var packets []pcapng.Packet
	for _, c := range captures {
		id, err := pw.AddInterface(c.Interface())
		if err != nil {
			return err
		}
		packets = append(packets, c.Packets(id)...)
	}
	slices.SortStableFunc(packets, func(a, b pcapng.Packet) int { return a.Time.Compare(b.Time) })
	for _, p := range packets {
		if err := pw.WritePacket(p); err != nil {
			return err
		}
	}
	return pw.Flush()
}
