#!/usr/bin/env bash
# The one Debian bookworm base every image of docker-compose.yml is built FROM.
#
#   docker/base/build-base.sh [IMAGE]        (default streaming-ml-base:bookworm)
#
# Reused when the image exists (so Docker's layer cache keeps every image built on it).
# Otherwise pulled from a registry when one answers (SML_BASE_PULL, default
# debian:bookworm-slim), and built with debootstrap (--variant=minbase) from
# deb.debian.org when none does. Either way: Debian bookworm with main, updates and
# security, no recommends, no apt lists left behind.
set -euo pipefail

IMAGE="${1:-streaming-ml-base:bookworm}"
PULL="${SML_BASE_PULL:-debian:bookworm-slim}"
MIRROR="${SML_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base: $IMAGE is present ($(docker image inspect -f '{{.Created}}' "$IMAGE"))"
    exit 0
fi

if [ "$PULL" != "none" ] && docker pull -q "$PULL" >/dev/null 2>&1; then
    docker tag "$PULL" "$IMAGE"
    echo "base: $IMAGE = $PULL (pulled)"
    exit 0
fi

echo "base: no registry answered for $PULL; building $IMAGE with debootstrap (about a minute)"
command -v debootstrap >/dev/null || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
}
rootfs="$(mktemp -d /tmp/sml-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
started=$SECONDS
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://security.debian.org/debian-security bookworm-security main
EOF
# As in Debian's own images: no recommends, no caches, no docs in later layers.
cat >"$rootfs/etc/apt/apt.conf.d/90streaming-ml" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
EOF
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
tar --numeric-owner -C "$rootfs" -c . |
    docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "base: $IMAGE built with debootstrap in $((SECONDS - started)) s"
