#!/usr/bin/env bash
# Builds and tags the images the tests and examples run jobs in, from files under
# deploy/images/ and Debian packages: the machine needs no registry.
#
#   batchai/busybox:latest   Debian's static busybox (deploy/images/busybox)
#   batchai/python:latest    Python 3 + numpy, a debootstrap of Debian bookworm (deploy/images/python)
#
# Usage: scripts/build-images.sh   (needs a running Docker engine; installs busybox-static and
# debootstrap with apt-get when run as root and they are missing). An image whose inputs did not
# change since it was built (label io.batchai.inputs) is kept.
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

# Whether IMAGE exists with the label io.batchai.inputs = HASH.
current() {
    [[ $(docker image inspect -f '{{index .Config.Labels "io.batchai.inputs"}}' "$1" 2>/dev/null) == "$2" ]]
}

busybox_inputs=$(cat "$root/deploy/images/busybox/Dockerfile" /bin/busybox | sha256sum | cut -c1-16)
if current batchai/busybox:latest "$busybox_inputs"; then
    echo "batchai/busybox:latest is current"
else
    mkdir "$context/busybox"
    cp "$root/deploy/images/busybox/Dockerfile" /bin/busybox "$context/busybox/"
    docker build -q --label "io.batchai.inputs=$busybox_inputs" -t batchai/busybox:latest "$context/busybox" >/dev/null
    echo "built batchai/busybox:latest"
fi

python_packages="python3,python3-numpy,python-is-python3"
python_inputs=$( (cat "$root/deploy/images/python/Dockerfile"; echo "$python_packages") | sha256sum | cut -c1-16)
if current batchai/python:latest "$python_inputs"; then
    echo "batchai/python:latest is current"
else
    if ! command -v debootstrap >/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
    fi
    command -v debootstrap >/dev/null || { echo "build-images: debootstrap is needed for batchai/python" >&2; exit 1; }
    rootfs="$context/python-root"
    debootstrap --variant=minbase --include="$python_packages" bookworm "$rootfs" http://deb.debian.org/debian \
        >"$context/debootstrap.log" 2>&1 || { tail -20 "$context/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    mkdir "$context/python"
    cp "$root/deploy/images/python/Dockerfile" "$context/python/"
    tar -C "$rootfs" -cf "$context/python/rootfs.tar" .
    docker build -q --label "io.batchai.inputs=$python_inputs" -t batchai/python:latest "$context/python" >/dev/null
    echo "built batchai/python:latest"
fi
# Earlier builds of these images, now untagged.
docker image prune -f --filter label=io.batchai.inputs >/dev/null
