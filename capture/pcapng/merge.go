package pcapng

import (
	"fmt"
	"io"
	"slices"
)

// Merge reads the pcapng files of several nodes and writes them to w as one
// section: the interfaces of every input, renumbered in input order, then
// all packets ordered by time (packets with equal times keep their input
// order). The inputs are read whole into memory, which suits headers-only
// traces.
func Merge(w io.Writer, inputs ...io.Reader) error {
	var (
		interfaces []Interface
		packets    []Packet
	)
	for n, in := range inputs {
		r, err := NewReader(in)
		if err != nil {
			return fmt.Errorf("reading input %d: %w", n, err)
		}
		base := len(interfaces)
		for {
			p, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("reading input %d: %w", n, err)
			}
			p.Interface += base
			packets = append(packets, p)
		}
		interfaces = append(interfaces, r.Interfaces()...)
	}
	slices.SortStableFunc(packets, func(a, b Packet) int { return a.Time.Compare(b.Time) })

	pw, err := NewWriter(w)
	if err != nil {
		return err
	}
	for _, i := range interfaces {
		if _, err := pw.AddInterface(i); err != nil {
			return err
		}
	}
	for _, p := range packets {
		if err := pw.WritePacket(p); err != nil {
			return err
		}
	}
	return pw.Flush()
}
