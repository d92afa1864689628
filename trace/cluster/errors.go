package cluster

import (
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// The kinds of error Run returns, matched with errors.Is. Any other error
// is one of these wrapped; ctx's error says the trace was interrupted.
var (
	// ErrInvalid: the request is wrong: an unknown pod or service, a
	// service without the port, IPv6, a source pod on the host's network.
	ErrInvalid = errors.New("invalid trace request")
	// ErrCannotRun: the trace could not run, or ran without a node: no
	// agent answered, an agent failed.
	ErrCannotRun = errors.New("the trace could not run")
	// ErrForbidden: the API server refused the user a request.
	ErrForbidden = errors.New("forbidden")
)

// kindError marks err with one of the kinds above.
type kindError struct {
	kind error
	err  error
}

func (e kindError) Error() string        { return e.err.Error() }
func (e kindError) Unwrap() error        { return e.err }
func (e kindError) Is(target error) bool { return target == e.kind }

// invalidf returns an error of kind ErrInvalid, formatted as fmt.Errorf does.
func invalidf(format string, args ...any) error {
	return kindError{ErrInvalid, fmt.Errorf(format, args...)}
}

// cannotRunf returns an error of kind ErrCannotRun.
func cannotRunf(format string, args ...any) error {
	return kindError{ErrCannotRun, fmt.Errorf(format, args...)}
}

// apiError describes an API error of a request to verb resource in
// namespace: a refusal becomes ErrForbidden, "forbidden: you may not create
// nettraces.nettrace.dev in namespace "default": <the server's message>";
// anything else is ErrCannotRun.
func apiError(err error, verb, resource, namespace string) error {
	where := ""
	if namespace != "" {
		where = fmt.Sprintf(" in namespace %q", namespace)
	}
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		return kindError{ErrForbidden, fmt.Errorf("forbidden: you may not %s %s%s: %w", verb, resource, where, err)}
	}
	return cannotRunf("%s %s%s: %w", verbing(verb), resource, where, err)
}

// verbing turns an API verb into the words of an error: "creating".
func verbing(verb string) string {
	switch verb {
	case "get":
		return "getting"
	case "list":
		return "listing"
	case "create":
		return "creating"
	case "delete":
		return "deleting"
	case "watch":
		return "watching"
	}
	return verb
}
