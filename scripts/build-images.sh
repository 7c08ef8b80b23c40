#!/usr/bin/env bash
# Builds and tags the images the tests and examples run jobs in, from files under
# deploy/images/ and Debian packages: the machine needs no registry.
#
#   batchai/busybox:latest   Debian's static busybox (deploy/images/busybox)
#
# Usage: scripts/build-images.sh   (needs a running Docker engine; installs busybox-static
# with apt-get when run as root and it is missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

static_busybox() {
    # Debian's busybox-static puts a static binary at /bin/busybox; the plain busybox package
    # puts a dynamic one there, useless in an image FROM scratch.
    [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1
}
if ! static_busybox; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
    fi
    static_busybox || { echo "build-images: a static /bin/busybox is needed (apt-get install busybox-static)" >&2; exit 1; }
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$root/deploy/images/busybox/Dockerfile" /bin/busybox "$context/"
docker build -q -t batchai/busybox:latest "$context" >/dev/null
echo "built batchai/busybox:latest"
