// Package ipamtest prepares the IPAM datastore for tests against a real API
// server: it installs the CRDs of deploy/crds/ipam.yaml and makes throwaway
// pools that are removed, with their blocks and handles, when the test ends.
package ipamtest

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-nettrace/nettrace/dataplane/ipam"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// ManifestPath is the path of deploy/crds/ipam.yaml in the source tree.
func ManifestPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "deploy", "crds", "ipam.yaml")
}

// InstallCRDs creates the IPAM CRDs unless they exist and waits until the
// API server serves them.
func InstallCRDs(tb testing.TB, cfg *rest.Config) {
	tb.Helper()
	dyn, err := dynamic.NewForConfig(unthrottled(cfg))
	if err != nil {
		tb.Fatal(err)
	}
	manifest, err := os.ReadFile(ManifestPath())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for doc := range bytes.SplitSeq(manifest, []byte("\n---\n")) {
		data, err := yaml.YAMLToJSON(doc)
		if err != nil {
			tb.Fatalf("parsing %s: %v", ManifestPath(), err)
		}
		crd := &unstructured.Unstructured{}
		if err := crd.UnmarshalJSON(data); err != nil {
			tb.Fatalf("decoding a CRD of %s: %v", ManifestPath(), err)
		}
		if _, err := dyn.Resource(crdResource).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			tb.Fatalf("creating CRD %s: %v", crd.GetName(), err)
		}
		if err := waitEstablished(ctx, dyn, crd.GetName()); err != nil {
			tb.Fatal(err)
		}
	}
}

// waitEstablished waits until the CRD's Established condition is True.
func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string) error {
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		crd, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, c := range conditions {
			c, _ := c.(map[string]any)
			if c["type"] == "Established" && c["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for CRD %s to be established: %w", name, err)
	}
	return nil
}

// NewPool installs the CRDs if need be, creates an IPPool and removes it,
// with every block inside its CIDR and every handle pointing into one, when
// the test ends.
func NewPool(tb testing.TB, cfg *rest.Config, name, cidr string, blockSize int) *ipam.IPPool {
	tb.Helper()
	InstallCRDs(tb, cfg)
	c, err := ipam.NewClientForConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	pool := &ipam.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       ipam.IPPoolSpec{CIDR: cidr, BlockSize: blockSize, Encapsulation: ipam.IPIP},
	}
	created, err := c.EnsurePool(context.Background(), pool)
	if err != nil {
		tb.Fatalf("creating IPPool %s: %v", name, err)
	}
	tb.Cleanup(func() { deletePool(tb, cfg, name, netip.MustParsePrefix(cidr)) })
	return created
}

// deletePool removes the pool, its blocks and the handles into them.
func deletePool(tb testing.TB, cfg *rest.Config, name string, cidr netip.Prefix) {
	tb.Helper()
	dyn, err := dynamic.NewForConfig(unthrottled(cfg))
	if err != nil {
		tb.Error(err)
		return
	}
	ctx := context.Background()
	inPool := func(s string) bool {
		p, err := netip.ParsePrefix(s)
		return err == nil && cidr.Overlaps(p)
	}
	for _, r := range []struct {
		gvr   schema.GroupVersionResource
		field string
	}{{ipam.HandleResource, "block"}, {ipam.BlockResource, "cidr"}} {
		list, err := dyn.Resource(r.gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			tb.Errorf("listing %s: %v", r.gvr.Resource, err)
			continue
		}
		for _, obj := range list.Items {
			if v, _, _ := unstructured.NestedString(obj.Object, "spec", r.field); inPool(v) {
				if err := dyn.Resource(r.gvr).Delete(ctx, obj.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					tb.Errorf("deleting %s %s: %v", r.gvr.Resource, obj.GetName(), err)
				}
			}
		}
	}
	if err := dyn.Resource(ipam.PoolResource).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		tb.Errorf("deleting IPPool %s: %v", name, err)
	}
}

// unthrottled is cfg without client-go's default limit of 5 requests a
// second, which would pace the clean-up of a pool's many objects.
func unthrottled(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 200, 400
	return cfg
}
