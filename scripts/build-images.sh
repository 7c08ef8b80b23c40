#!/usr/bin/env bash
# Builds and tags images from files under deploy/images/ and Debian packages: the machine needs
# no registry. An image whose inputs did not change since it was built (label io.batchai.inputs)
# is kept.
#
#   scripts/build-images.sh [jobs]   the images tests and examples run jobs in:
#     batchai/busybox:latest   Debian's static busybox (deploy/images/busybox)
#     batchai/python:latest    Python 3 + numpy, a debootstrap of Debian bookworm (deploy/images/python)
#   scripts/build-images.sh farm     the images docker-compose.yml runs (needs BuildKit: docker
#                                    buildx, or Debian's docker.io CLI with DOCKER_BUILDKIT=1):
#     batchai/debian:bookworm  a debootstrap (minbase) standing in for debian:bookworm-slim
#     batchai/postgres:latest  PostgreSQL from Debian's packages (deploy/images/postgres)
#     batchai/prometheus:latest  Prometheus from Debian's packages (deploy/images/prometheus)
#     batchai/server:latest, batchai/agent:latest   (deploy/images/batchai) holding the binary
#                              $BATCHAI_BIN (default: $CARGO_TARGET_DIR/release/batchai)
#
# Needs a running Docker engine; installs busybox-static and debootstrap with apt-get when run
# as root and they are missing. The farm images run apt-get in their builds (Debian's mirror).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-jobs}
case $what in jobs | farm) ;; *) echo "usage: $0 [jobs|farm]" >&2; exit 2 ;; esac

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# Whether IMAGE exists with the label io.batchai.inputs = HASH.
current() {
    [[ $(docker image inspect -f '{{index .Config.Labels "io.batchai.inputs"}}' "$1" 2>/dev/null) == "$2" ]]
}

# A minbase debootstrap of bookworm with PACKAGES (comma-separated) as $context/NAME/rootfs.tar.
debootstrap_tar() { # NAME PACKAGES
    if ! command -v debootstrap >/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
    fi
    command -v debootstrap >/dev/null || { echo "build-images: debootstrap is needed for $1" >&2; exit 1; }
    local rootfs="$context/$1-root"
    debootstrap --variant=minbase ${2:+--include="$2"} bookworm "$rootfs" http://deb.debian.org/debian \
        >"$context/debootstrap.log" 2>&1 || { tail -20 "$context/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    mkdir -p "$context/$1"
    tar -C "$rootfs" -cf "$context/$1/rootfs.tar" .
    rm -rf "$rootfs"
}

jobs_images() {
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
    local busybox_inputs
    busybox_inputs=$(cat "$root/deploy/images/busybox/Dockerfile" /bin/busybox | sha256sum | cut -c1-16)
    if current batchai/busybox:latest "$busybox_inputs"; then
        echo "batchai/busybox:latest is current"
    else
        mkdir "$context/busybox"
        cp "$root/deploy/images/busybox/Dockerfile" /bin/busybox "$context/busybox/"
        docker build -q --label "io.batchai.inputs=$busybox_inputs" -t batchai/busybox:latest "$context/busybox" >/dev/null
        echo "built batchai/busybox:latest"
    fi

    local python_packages="python3,python3-numpy,python-is-python3" python_inputs
    python_inputs=$( (cat "$root/deploy/images/python/Dockerfile"; echo "$python_packages") | sha256sum | cut -c1-16)
    if current batchai/python:latest "$python_inputs"; then
        echo "batchai/python:latest is current"
    else
        debootstrap_tar python "$python_packages"
        cp "$root/deploy/images/python/Dockerfile" "$context/python/"
        docker build -q --label "io.batchai.inputs=$python_inputs" -t batchai/python:latest "$context/python" >/dev/null
        echo "built batchai/python:latest"
    fi
}

farm_images() {
    # BuildKit skips the stages a target does not need, here the Dockerfile's Rust stage (which
    # would need a registry). Docker CLIs from 23 on need the buildx plugin for it; older ones
    # (Debian bookworm's docker.io) have it built in.
    local buildkit=() cli version
    if docker buildx version >/dev/null 2>&1; then
        buildkit=(docker buildx build --load)
    else
        for cli in $(type -ap docker | awk '!seen[$0]++'); do
            version=$("$cli" version -f '{{.Client.Version}}' 2>/dev/null || true)
            if [[ ${version%%.*} =~ ^[0-9]+$ ]] && ((${version%%.*} < 23)); then
                buildkit=(env DOCKER_BUILDKIT=1 "$cli" build)
                break
            fi
        done
    fi
    ((${#buildkit[@]})) || { echo "build-images: BuildKit is needed: docker buildx, or Debian's docker.io CLI" >&2; exit 1; }
    local bin=${BATCHAI_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/batchai}
    [[ -x $bin ]] || { echo "build-images: no batchai binary at $bin (cargo build --release -p batchai, or set BATCHAI_BIN)" >&2; exit 1; }

    local debian_inputs
    debian_inputs=$(sha256sum <"$root/deploy/images/debian/Dockerfile" | cut -c1-16)
    if current batchai/debian:bookworm "$debian_inputs"; then
        echo "batchai/debian:bookworm is current"
    else
        debootstrap_tar debian ""
        cp "$root/deploy/images/debian/Dockerfile" "$context/debian/"
        "${buildkit[@]}" -q --label "io.batchai.inputs=$debian_inputs" -t batchai/debian:bookworm "$context/debian" >/dev/null
        echo "built batchai/debian:bookworm"
    fi
    local base=(--build-arg BASE_IMAGE=batchai/debian:bookworm)

    local name inputs
    for name in postgres prometheus; do
        inputs=$( (echo "$debian_inputs"; cat "$root/deploy/images/$name"/*) | sha256sum | cut -c1-16)
        if current "batchai/$name:latest" "$inputs"; then
            echo "batchai/$name:latest is current"
        else
            "${buildkit[@]}" -q "${base[@]}" --label "io.batchai.inputs=$inputs" -t "batchai/$name:latest" \
                "$root/deploy/images/$name" >/dev/null
            echo "built batchai/$name:latest"
        fi
    done

    # The build context holds the binary only (BINARY=context).
    local batchai_inputs target
    batchai_inputs=$( (echo "$debian_inputs"; cat "$root/deploy/images/batchai/Dockerfile" "$bin") | sha256sum | cut -c1-16)
    mkdir "$context/batchai"
    for target in server agent; do
        if current "batchai/$target:latest" "$batchai_inputs"; then
            echo "batchai/$target:latest is current"
            continue
        fi
        [[ -e $context/batchai/batchai ]] || cp "$bin" "$context/batchai/batchai"
        "${buildkit[@]}" -q "${base[@]}" --build-arg BINARY=context --target "$target" \
            --label "io.batchai.inputs=$batchai_inputs" -t "batchai/$target:latest" \
            -f "$root/deploy/images/batchai/Dockerfile" "$context/batchai" >/dev/null
        echo "built batchai/$target:latest"
    done
}

"${what}_images"
# Earlier builds of these images, now untagged.
docker image prune -f --filter label=io.batchai.inputs >/dev/null
