package kubelet

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// serviceAccountMount is where Kubernetes mounts a pod's token.
const serviceAccountMount = "/var/run/secrets/kubernetes.io/serviceaccount"

// ContainerInit turns the current process into a container's first process
// and execs argv. It runs after `ip netns exec`, so it is already in the
// pod's netns and in a mount namespace of its own. It gives the process a
// UTS namespace with the pod's hostname and a private /run, mounts the
// service-account token when saDir is set, and changes to workdir.
func ContainerInit(hostname, saDir, workdir string, argv []string) error {
	if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
		return fmt.Errorf("new UTS namespace: %w", err)
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return fmt.Errorf("setting hostname %q: %w", hostname, err)
	}
	// A private /run, as a container has: the host's is not its business,
	// and the token mount needs a place of its own.
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"); err != nil {
		return fmt.Errorf("mounting /run: %w", err)
	}
	if saDir != "" {
		if err := os.MkdirAll(serviceAccountMount, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", serviceAccountMount, err)
		}
		if err := unix.Mount(saDir, serviceAccountMount, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounting the service-account token: %w", err)
		}
	}
	if workdir != "" {
		if err := os.Chdir(workdir); err != nil {
			return fmt.Errorf("changing to %s: %w", workdir, err)
		}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("container command %q: %w", argv[0], err)
	}
	return syscall.Exec(path, argv, os.Environ())
}
