package apitest

import (
	"context"
	"net"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func TestServerServesFromHostAndFromAnotherNetns(t *testing.T) {
	srv := Get(t)
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	created, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apitest"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a namespace: %v", err)
	}

	other, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close(); _ = testutils.UnmountNS(other) })
	if err := other.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.KubeconfigIn(t, other.Path()))
	if err != nil {
		t.Fatal(err)
	}
	// The forwarder listens on the other netns's loopback: dial from there.
	cfg.Dial = func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		err = other.Do(func(ns.NetNS) error {
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	got, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(ctx, "apitest", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the namespace through the forwarder in another netns: %v", err)
	}
	if got.UID != created.UID {
		t.Fatalf("got namespace %s, want %s", got.UID, created.UID)
	}
}
