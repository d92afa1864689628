package cni

import (
	"context"
	"errors"
	"net"

	"github.com/containernetworking/cni/pkg/types"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
)

// cniError gives err the CNI error code that tells the runtime what to do:
// 7 for a pool that the configuration names wrongly, 11 when the datastore
// is out of reach, busy or out of addresses (trying again later may work),
// and 999 for the rest. An error that already is a CNI error is kept.
func cniError(err error) error {
	var cniErr *types.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &cniErr):
		return err
	case errors.Is(err, ipam.ErrPoolNotFound), errors.Is(err, ipam.ErrInvalidPool):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.Is(err, ipam.ErrPoolExhausted), datastoreUnavailable(err):
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

// datastoreUnavailable reports whether err says that the API server could
// not be reached or could not answer in time, or that a write kept losing
// races: conditions that pass.
func datastoreUnavailable(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) ||
		errors.Is(err, context.DeadlineExceeded) ||
		timedOut(err) ||
		apierrors.IsConflict(err) ||
		apierrors.IsAlreadyExists(err)
}

// timedOut reports whether err is a request that ran out of time: on the
// way (a dial or TLS handshake timeout) or at the API server.
func timedOut(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout() ||
		apierrors.IsServerTimeout(err) ||
		apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err)
}
