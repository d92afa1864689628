package kubelet

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestImageName(t *testing.T) {
	for ref, want := range map[string]string{
		"nginx":                                "nginx",
		"nginx:1.27":                           "nginx",
		"docker.io/library/nginx:latest":       "nginx",
		"traefik/whoami":                       "traefik/whoami",
		"docker.io/traefik/whoami:v1.10":       "traefik/whoami",
		"nicolaka/netshoot@sha256:0123abcd":    "nicolaka/netshoot",
		"localhost/busybox":                    "busybox",
		"registry.example.com:5000/team/app:1": "team/app",
	} {
		if got := imageName(ref); got != want {
			t.Errorf("imageName(%q) = %q, want %q", ref, got, want)
		}
	}
}

func TestImageCommands(t *testing.T) {
	im := Images{LabBin: "/bin/nettrace-lab", DNSBin: "/bin/nettrace-dns"}
	for _, c := range []struct {
		container corev1.Container
		want      []string
	}{
		{corev1.Container{Image: "nginx", Args: []string{"ignored"}}, []string{"/bin/nettrace-lab", "image", "nginx"}},
		{corev1.Container{Image: "traefik/whoami", Args: []string{"--port", "8080"}}, []string{"/bin/nettrace-lab", "image", "whoami", "--port", "8080"}},
		{corev1.Container{Image: "nicolaka/netshoot"}, []string{"sleep", "infinity"}},
		{corev1.Container{Image: "busybox", Args: []string{"sleep", "3600"}}, []string{"sleep", "3600"}},
		{corev1.Container{Image: "nicolaka/netshoot", Command: []string{"/bin/sh"}, Args: []string{"-c", "echo hi"}}, []string{"/bin/sh", "-c", "echo hi"}},
		{corev1.Container{Image: "nettrace/dns", Args: []string{"--listen=:53"}}, []string{"/bin/nettrace-dns", "--listen=:53"}},
	} {
		got, err := im.Command(&c.container)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Command(%s %v %v) = %v, %v; want %v", c.container.Image, c.container.Command, c.container.Args, got, err, c.want)
		}
	}
	_, err := im.Command(&corev1.Container{Image: "example.com/unknown:1"})
	var unknown ErrImageUnknown
	if !errors.As(err, &unknown) || !strings.Contains(err.Error(), "example.com/unknown:1") {
		t.Errorf("an unknown image gives %v", err)
	}
}

func TestResolvConfFollowsDNSPolicy(t *testing.T) {
	k := &Kubelet{cfg: Config{
		ClusterDNS:     netip.MustParseAddr("10.96.0.10"),
		ClusterDomain:  "cluster.local",
		NodeResolvConf: "nameserver 198.51.100.53\n",
	}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team"}}
	pod.Spec.DNSPolicy = corev1.DNSClusterFirst
	want := "search team.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
	if got := k.resolvConf(pod); got != want {
		t.Errorf("ClusterFirst:\n%s\nwant:\n%s", got, want)
	}
	pod.Spec.DNSPolicy = corev1.DNSDefault
	if got := k.resolvConf(pod); got != k.cfg.NodeResolvConf {
		t.Errorf("Default: %q", got)
	}
	pod.Spec.DNSPolicy = corev1.DNSClusterFirst
	pod.Spec.HostNetwork = true
	if got := k.resolvConf(pod); got != k.cfg.NodeResolvConf {
		t.Errorf("ClusterFirst with hostNetwork: %q", got)
	}
}

func TestPodPhaseFollowsContainersAndRestartPolicy(t *testing.T) {
	k := &Kubelet{cfg: Config{NodeIP: netip.MustParseAddr("192.168.10.101")}}
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "nginx"}}}}
	exited := func(code int32) *containerRuntime {
		return &containerRuntime{Name: "a", ID: "x", LastExit: &exitRecord{ExitCode: code, FinishedAt: time.Now()}}
	}
	for _, c := range []struct {
		name   string
		policy corev1.RestartPolicy
		cr     *containerRuntime
		phase  corev1.PodPhase
		ready  bool
	}{
		{"creating", corev1.RestartPolicyAlways, nil, corev1.PodPending, false},
		{"running and ready", corev1.RestartPolicyAlways, &containerRuntime{Name: "a", ID: "x", Running: true, Ready: true}, corev1.PodRunning, true},
		{"exited 0, Never", corev1.RestartPolicyNever, exited(0), corev1.PodSucceeded, false},
		{"exited 1, Never", corev1.RestartPolicyNever, exited(1), corev1.PodFailed, false},
		{"exited 1, Always: will restart", corev1.RestartPolicyAlways, exited(1), corev1.PodRunning, false},
	} {
		pod.Spec.RestartPolicy = c.policy
		pr := &podRuntime{PodIP: netip.MustParseAddr("172.16.1.2"), NetworkReady: true, Containers: map[string]*containerRuntime{}}
		if c.cr != nil {
			pr.Containers["a"] = c.cr
		}
		st := k.podStatus(pod, pr)
		if st.Phase != c.phase {
			t.Errorf("%s: phase %s, want %s", c.name, st.Phase, c.phase)
		}
		ready := false
		for _, cond := range st.Conditions {
			if cond.Type == corev1.PodReady {
				ready = cond.Status == corev1.ConditionTrue
			}
		}
		if ready != c.ready {
			t.Errorf("%s: ready %t, want %t", c.name, ready, c.ready)
		}
		if st.PodIP != "172.16.1.2" || st.HostIP != "192.168.10.101" {
			t.Errorf("%s: podIP %q hostIP %q", c.name, st.PodIP, st.HostIP)
		}
	}
}
