package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// MaxTimeout bounds the timeout a NetTrace may ask for.
const MaxTimeout = 10 * time.Minute

// errInvalid marks the errors that are the request's fault: the trace
// fails with reason Invalid.
var errInvalid = errors.New("invalid trace request")

type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Unwrap() error        { return e.err }
func (e invalidError) Is(target error) bool { return target == errInvalid }

func invalidf(format string, args ...any) error {
	return invalidError{fmt.Errorf(format, args...)}
}

// checkedSource is a source pod that may be traced from this node, or an
// address outside the cluster whose traffic enters by this node.
type checkedSource struct {
	ip netip.Addr
	// label is "namespace/name"; empty for an address outside the cluster.
	label string
	dst   netip.Addr
}

// outside reports whether the source is an address outside the cluster.
func (s checkedSource) outside() bool { return s.label == "" }

// validate checks what the source agent acts on, with the agent's own
// view of the cluster: the source pod exists in the NetTrace's namespace,
// runs on this node with an IPv4 address of its own, and the flow is one
// that can be traced. A source outside the cluster must be an IPv4
// address, traced live.
func (a *Agent) validate(ctx context.Context, nt *cluster.NetTrace) (checkedSource, error) {
	if nt.Spec.SourceIP != "" {
		return validateOutside(nt)
	}
	label := nt.Namespace + "/" + nt.Spec.Source
	pod, err := a.cfg.Kube.CoreV1().Pods(nt.Namespace).Get(ctx, nt.Spec.Source, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return checkedSource{}, invalidf("pod %q not found in namespace %q", nt.Spec.Source, nt.Namespace)
	}
	if err != nil {
		return checkedSource{}, fmt.Errorf("getting the source pod %s: %w", label, err)
	}
	switch {
	case pod.Spec.NodeName != a.cfg.Node:
		return checkedSource{}, invalidf("pod %s runs on node %q, not on %s", label, pod.Spec.NodeName, a.cfg.Node)
	case pod.Spec.HostNetwork:
		return checkedSource{}, invalidf("pod %s uses the host's network: a trace starts from a pod with a network namespace of its own", label)
	}
	src, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || !src.Is4() {
		return checkedSource{}, invalidf("pod %s has the address %q: only IPv4 is supported yet", label, pod.Status.PodIP)
	}
	dst, err := netip.ParseAddr(nt.Spec.Flow.Dst)
	if err != nil || !dst.Is4() {
		return checkedSource{}, invalidf("destination %q: only IPv4 is supported yet", nt.Spec.Flow.Dst)
	}
	if err := validFlow(nt.Spec); err != nil {
		return checkedSource{}, err
	}
	return checkedSource{ip: src, label: label, dst: dst}, nil
}

// validateOutside checks a trace from an address outside the cluster.
func validateOutside(nt *cluster.NetTrace) (checkedSource, error) {
	src, err := netip.ParseAddr(nt.Spec.SourceIP)
	if err != nil || !src.Is4() {
		return checkedSource{}, invalidf("source address %q: only IPv4 is supported yet", nt.Spec.SourceIP)
	}
	dst, err := netip.ParseAddr(nt.Spec.Flow.Dst)
	if err != nil || !dst.Is4() {
		return checkedSource{}, invalidf("destination %q: only IPv4 is supported yet", nt.Spec.Flow.Dst)
	}
	switch {
	case nt.Spec.Mode != cluster.ModeLive:
		return checkedSource{}, invalidf("source %s is outside the cluster, where no probe can be sent from: the trace must be live", src)
	case nt.Spec.Source != "":
		return checkedSource{}, invalidf("the trace names a source pod %q and a source address %s", nt.Spec.Source, src)
	}
	if err := validFlow(nt.Spec); err != nil {
		return checkedSource{}, err
	}
	return checkedSource{ip: src, dst: dst}, nil
}

// validFlow checks the protocol, port, mode and timeout of a spec.
func validFlow(spec cluster.Spec) error {
	port := spec.Flow.DstPort
	switch spec.Flow.Proto {
	case trace.TCP, trace.UDP:
		if port < 1 || port > 65535 {
			return invalidf("destination port %d: want 1-65535", port)
		}
	case trace.ICMP:
		if port != 0 {
			return invalidf("icmp has no port, got %d", port)
		}
	default:
		return invalidf("protocol %q: want tcp, udp or icmp", spec.Flow.Proto)
	}
	switch {
	case spec.Mode != cluster.ModeProbe && spec.Mode != cluster.ModeLive:
		return invalidf("mode %q: want probe or live", spec.Mode)
	case spec.Timeout.Duration <= 0 || spec.Timeout.Duration > MaxTimeout:
		return invalidf("timeout %s: want more than 0 and at most %s", spec.Timeout.Duration, MaxTimeout)
	case spec.Target.Kind == cluster.TargetDNS && (spec.Target.Name == "" || spec.Flow.Proto != trace.UDP):
		return invalidf("a DNS lookup needs a name, over udp")
	}
	return nil
}
