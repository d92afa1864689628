package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// tokenLifetime is the lifetime asked for projected service-account tokens.
const tokenLifetime = 24 * 3600

// wantsToken reports whether the pod gets a service-account token mounted.
func (k *Kubelet) wantsToken(pod *corev1.Pod) bool {
	return pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken
}

// writeToken asks the API server for a token bound to the pod (TokenRequest,
// which the Node authorizer allows for pods on this node) and writes it with
// the CA and the namespace into the pod's directory, laid out as
// /var/run/secrets/kubernetes.io/serviceaccount. It returns the directory.
func (k *Kubelet) writeToken(ctx context.Context, pod *corev1.Pod) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	lifetime := int64(tokenLifetime)
	tr, err := k.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: &lifetime,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	ca, err := os.ReadFile(k.cfg.CAFile)
	if err != nil {
		return "", fmt.Errorf("reading the cluster CA: %w", err)
	}
	dir := filepath.Join(k.podDir(pod.UID), "serviceaccount")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for name, content := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": ca, "namespace": []byte(pod.Namespace)} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			return "", fmt.Errorf("writing service-account %s: %w", name, err)
		}
	}
	return dir, nil
}
