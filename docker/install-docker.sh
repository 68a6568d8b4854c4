#!/usr/bin/env bash
# What the compose stack needs on the host, installed when missing (idempotent):
#   docker.io (Debian's Docker Engine and CLI), Docker Compose v2 built from its Go module
#   (not a Debian package), and debootstrap (the base image where no registry answers).
# Starting the daemon is docker/dockerd.sh's job.
set -euo pipefail
COMPOSE_VERSION="${SML_COMPOSE_VERSION:-v2.32.4}"
PLUGINS=/usr/local/lib/docker/cli-plugins

missing=()
command -v docker >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root, or: sudo apt-get install -y ${missing[*]}" >&2; exit 1; }
    echo "docker: apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
    GO="$(command -v go || echo /usr/local/go/bin/go)"
    [ -x "$GO" ] || { echo "Docker Compose v2 is built from its Go module: install Go first" >&2; exit 1; }
    echo "docker: building Docker Compose $COMPOSE_VERSION from its Go module (about 2.5 min)"
    gobin="$(mktemp -d)"
    GOBIN="$gobin" nice "$GO" install \
        -ldflags "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
        "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION"
    mkdir -p "$PLUGINS"
    install -m 0755 "$gobin/cmd" "$PLUGINS/docker-compose"
    rm -rf "$gobin"
fi
echo "docker: $(docker --version); $(docker compose version)"
