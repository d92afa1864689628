package kubelet

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Images says how the lab runs container images. There is no image registry
// or container engine here: each known image maps to a program on the host
// that behaves like the real image on the wire.
type Images struct {
	// LabBin is the nettrace-lab binary, whose `image` subcommand holds the
	// built-in nginx and whoami servers, and whose `container-init` sets up
	// a container's process.
	LabBin string
	// DNSBin is the project's DNS server, run for the nettrace/dns image.
	DNSBin string
}

// KnownImages lists the images the lab can run, for error messages.
const KnownImages = "nginx, traefik/whoami, nicolaka/netshoot, busybox, nettrace/dns"

// imageName strips the registry, the library/ prefix, the tag and the digest:
// "docker.io/library/nginx:1.27" → "nginx".
func imageName(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	if parts := strings.SplitN(ref, "/", 2); len(parts) == 2 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		ref = parts[1]
	}
	return strings.TrimPrefix(ref, "library/")
}

// ErrImageUnknown is the reason given to a container whose image the lab
// cannot run, like a kubelet's ErrImagePull.
type ErrImageUnknown struct{ Image string }

func (e ErrImageUnknown) Error() string {
	return fmt.Sprintf("image %q is not known to the lab (it runs %s)", e.Image, KnownImages)
}

// Command returns the argv that runs container c.
func (im Images) Command(c *corev1.Container) ([]string, error) {
	userCmd := append(append([]string{}, c.Command...), c.Args...)
	switch imageName(c.Image) {
	case "nginx":
		// Like the real image, nginx ignores the pod's args.
		return []string{im.LabBin, "image", "nginx"}, nil
	case "traefik/whoami":
		return append([]string{im.LabBin, "image", "whoami"}, c.Args...), nil
	case "nicolaka/netshoot", "busybox":
		if len(c.Command) == 0 && len(c.Args) == 0 {
			// The real images start an interactive shell, which exits at once
			// without a terminal. In the lab they wait, so that one can exec
			// into them as the seed does.
			return []string{"sleep", "infinity"}, nil
		}
		// Neither image has an entrypoint: args alone are the command.
		return userCmd, nil
	case "nettrace/dns":
		return append([]string{im.DNSBin}, c.Args...), nil
	}
	return nil, ErrImageUnknown{Image: c.Image}
}
