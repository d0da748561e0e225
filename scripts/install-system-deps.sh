#!/bin/sh
# Debian packages the platform needs beyond Python:
#   bubblewrap          tier-1 sandboxes (namespaces, seccomp, tmpfs mounts)
#   libseccomp2         compiles the sandboxes' seccomp filter (through pyseccomp)
#   python3             the sandboxes' interpreter: the host's /usr/bin/python3, read-only
#   python3-matplotlib  charts (PNG) from the sandboxes' code interpreter
#   qemu-system-x86     tier-2 sandboxes (microVMs, -M microvm)
#   busybox-static cpio the tier-2 guest's initramfs (its kernel: `apt-get download`
#                       linux-image-amd64, see tramontane/sandbox/microvm/image.py)
#   npm                 installs the web console's browser libraries (install-console-assets.sh);
#                       only where no npm is on PATH (a Node.js install of its own brings one)
#   tesseract-ocr       OCR of scanned PDF pages and images (/v1/ocr, library documents),
#   tesseract-ocr-eng   with its English and French models
#   tesseract-ocr-fra
#   chromium            the web console's browser tests (driven by Playwright, headless)
#   mmdebstrap          builds sandbox templates (Debian trees) from the Debian mirror
#   squashfs-tools      a template's read-only root disk for tier-2 sandboxes (mksquashfs)
#   postgresql          the tenancy tests start a throwaway server (initdb, pg_ctl);
#                       production may point TRAMONTANE_DATABASE_URL at one
#   podman crun         image deployments' containers (crun: the OCI runtime; podman
#                       brings conmon, netavark and the storage drivers)
#   git                 git deployments' clones
# Safe to run again; does nothing where everything is installed. Needs root (or sudo).
set -eu

PACKAGES="bubblewrap libseccomp2 python3 python3-matplotlib qemu-system-x86 busybox-static cpio mmdebstrap squashfs-tools
postgresql chromium tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra podman crun git"

missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
if ! command -v npm >/dev/null 2>&1; then
    missing="$missing npm"
fi

# crun refuses a hybrid cgroup host (v1 controllers plus a cgroup2 mount) whose
# cgroup2 hierarchy still holds a controller, e.g. hugetlb when no v1 hierarchy
# mounts it: binding each such controller to a v1 hierarchy of its own empties
# cgroup2. Pure cgroup2 hosts (systemd's default) need nothing.
free_hybrid_cgroup2() {
    unified=/sys/fs/cgroup/unified
    [ -r "$unified/cgroup.controllers" ] && [ -d /sys/fs/cgroup/memory ] || return 0
    for controller in $(cat "$unified/cgroup.controllers"); do
        [ -d "/sys/fs/cgroup/$controller" ] && continue
        mkdir -p "/sys/fs/cgroup/$controller" &&
            mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller" ||
            echo "install-system-deps: cannot mount the $controller cgroup; containers may not start" >&2
    done
}
if [ "$(id -u)" -eq 0 ]; then
    free_hybrid_cgroup2
fi

[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: not a Debian system; install by hand:$missing" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086  # the list is meant to split into words
$SUDO apt-get install -y -q --no-install-recommends $missing
