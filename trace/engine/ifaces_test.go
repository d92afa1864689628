package engine

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/engine/enginetest"
)

// TestInterfaceBound traces pod to pod on a node with more pod veths than
// the bound: the veths of the flow's pods are captured first, so the path
// is whole, and the interfaces left out are reported as a loss.
func TestInterfaceBound(t *testing.T) {
	c := enginetest.NewCluster(t, "nft")
	for _, veth := range []string{"cali00000000001", "cali00000000002"} {
		c.Node.Netns.Run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "x"+veth[4:])
		c.Node.Netns.Run(t, "ip", "link", "set", veth, "up")
	}
	req := request(c, tcpFlow(enginetest.ClientIP, enginetest.ServerIP+":80"), Probe, 5*time.Second)
	req.MaxInterfaces = 2
	path, err := Trace(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []trace.Loss{{Node: "k8s-w1", Source: "capture", Count: 3,
		Detail: "not captured on 3 interfaces beyond the bound of 2: eth0, cali00000000001, cali00000000002"}}
	if !slices.Equal(path.Lost, want) {
		t.Errorf("lost %+v, want %+v", path.Lost, want)
	}
	if path.Verdict.Result != trace.Replied {
		t.Errorf("verdict %+v, want replied", path.Verdict)
	}
	var seen []string
	for _, h := range path.Hops {
		if h.Kind == trace.HopInterface && h.Netns == "" && !slices.Contains(seen, h.Iface) {
			seen = append(seen, h.Iface)
		}
	}
	if want := []string{enginetest.ClientVeth, enginetest.ServerVeth}; !slices.Equal(seen, want) {
		t.Errorf("captured in the node's namespace on %v, want %v", seen, want)
	}
}
