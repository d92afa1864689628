package cluster

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"
)

// Client reads and writes NetTraces through a dynamic client.
type Client struct {
	res dynamic.NamespaceableResourceInterface
}

// NewClient returns a client of the NetTraces that dyn reaches.
func NewClient(dyn dynamic.Interface) *Client {
	return &Client{res: dyn.Resource(Resource)}
}

// Get reads one NetTrace.
func (c *Client) Get(ctx context.Context, namespace, name string) (*NetTrace, error) {
	u, err := c.res.Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("getting NetTrace %s/%s: %w", namespace, name, err)
	}
	return FromUnstructured(u)
}

// List lists the NetTraces of namespace, of every namespace when empty.
func (c *Client) List(ctx context.Context, namespace string) ([]NetTrace, error) {
	l, err := c.res.Namespace(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing NetTraces: %w", err)
	}
	out := make([]NetTrace, 0, len(l.Items))
	for i := range l.Items {
		t, err := FromUnstructured(&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *t)
	}
	return out, nil
}

// Create creates t; its status, if any, is not written.
func (c *Client) Create(ctx context.Context, t *NetTrace) (*NetTrace, error) {
	u, err := ToUnstructured(t)
	if err != nil {
		return nil, err
	}
	created, err := c.res.Namespace(t.Namespace).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating NetTrace %s/%s: %w", t.Namespace, t.Name, err)
	}
	return FromUnstructured(created)
}

// Delete deletes the NetTrace with the uid, when it still exists; one that
// is gone already, or was replaced by another of the same name, is not an
// error.
func (c *Client) Delete(ctx context.Context, namespace, name string, uid types.UID) error {
	opts := metav1.DeleteOptions{}
	if uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err := c.res.Namespace(namespace).Delete(ctx, name, opts)
	if err != nil && !isGoneOrReplaced(err) {
		return fmt.Errorf("deleting NetTrace %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Watch watches one NetTrace from resourceVersion on.
func (c *Client) Watch(ctx context.Context, namespace, name, resourceVersion string) (watch.Interface, error) {
	w, err := c.res.Namespace(namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", name).String(),
		ResourceVersion: resourceVersion,
	})
	if err != nil {
		return nil, fmt.Errorf("watching NetTrace %s/%s: %w", namespace, name, err)
	}
	return w, nil
}

// UpdateStatus reads the NetTrace, lets change edit its status, and writes
// the status back when change returns true, again from a fresh read when
// another writer came first. It returns the NetTrace as last read or
// written.
func (c *Client) UpdateStatus(ctx context.Context, namespace, name string, change func(*NetTrace) bool) (*NetTrace, error) {
	var last *NetTrace
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		t, err := c.Get(ctx, namespace, name)
		if err != nil {
			return err
		}
		last = t
		if !change(t) {
			return nil
		}
		u, err := ToUnstructured(t)
		if err != nil {
			return err
		}
		written, err := c.res.Namespace(namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("updating the status of NetTrace %s/%s: %w", namespace, name, err)
		}
		last, err = FromUnstructured(written)
		return err
	})
	return last, err
}

// FromUnstructured decodes a NetTrace. It goes through JSON, so that hops
// read exactly as trace.Hop's JSON encoding wrote them.
func FromUnstructured(u *unstructured.Unstructured) (*NetTrace, error) {
	b, err := u.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encoding NetTrace %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	t := &NetTrace{}
	if err := json.Unmarshal(b, t); err != nil {
		return nil, fmt.Errorf("decoding NetTrace %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return t, nil
}

// ToUnstructured encodes a NetTrace, with its API version and kind.
func ToUnstructured(t *NetTrace) (*unstructured.Unstructured, error) {
	c := *t
	c.APIVersion, c.Kind = Group+"/"+Version, Kind
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encoding NetTrace %s/%s: %w", t.Namespace, t.Name, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("decoding NetTrace %s/%s: %w", t.Namespace, t.Name, err)
	}
	return u, nil
}

// isGoneOrReplaced reports whether a delete failed because the object is
// gone, or because its UID precondition failed: another took its name.
func isGoneOrReplaced(err error) bool {
	return apierrors.IsNotFound(err) || apierrors.IsConflict(err)
}
