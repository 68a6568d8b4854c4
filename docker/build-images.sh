#!/usr/bin/env bash
# Every image docker-compose.yml and docker-compose-dev.yml run, built here from pinned
# artifacts; no image is pulled (the base is pulled only where a registry answers).
#
#   docker/build-images.sh            (make compose-build; make compose-up runs it)
#
# 1. streaming-ml-base:bookworm       Debian bookworm (docker/base/build-base.sh)
# 2. artifacts fetched on the host    the jars of stack/pom.xml (`streaming-ml stack install`
#                                     puts them in SML_DIST_DIR, .stack/dist) and a
#                                     wheelhouse of requirements.lock, every file checked
#                                     against its hash; HTTPS works on the host, not in builds
# 3. docker build, legacy builder     each image from a staged context of exactly its files
#                                     (.stack/images/<name>), so contexts stay small and
#                                     Docker's layer cache holds across runs and clones
# 4. the Bento                        `bentoml build` + `bentoml containerize` (base image and
#                                     Dockerfile template in bentofile.yaml)
#
# Needs: docker (a running daemon), the project venv (make venv) and the jars.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export DOCKER_BUILDKIT=0
BIN="${SML_VENV_BIN:-$ROOT/.venv/bin}"
DIST="${SML_DIST_DIR:-$ROOT/.stack/dist}"
WORK="$ROOT/.stack/images"
LOGS="$WORK/logs"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
mkdir -p "$WORK" "$LOGS"
started=$SECONDS

step() { printf '\033[1m[%5ss] %s\033[0m\n' "$((SECONDS - started))" "$*"; }

# docker build with its "Step n/m" lines as progress; the full log in $LOGS on failure.
build() {  # build <tag> <context dir> [docker build args...]
    local tag="$1" context="$2"
    shift 2
    local log="$LOGS/${tag//[:\/]/_}.log" t0=$SECONDS
    step "image $tag"
    if ! nice docker build --force-rm -t "$tag" "$@" "$context" >"$log" 2>&1; then
        tail -n 30 "$log"
        echo "build of $tag failed; full log: $log" >&2
        exit 1
    fi
    printf '        %s: %s steps, %s cached, %s s\n' "$tag" \
        "$(grep -c 'Step [0-9]*/' "$log" || true)" "$(grep -c 'Using cache' "$log" || true)" \
        "$((SECONDS - t0))"
}

# A fresh build context: files copied (hard links for the big trees).
stage() {  # stage <name> <src>... ; a src "a=b" puts a at b inside the context
    local dir="$WORK/$1"
    shift
    rm -rf "$dir"
    mkdir -p "$dir"
    local item src dest
    for item in "$@"; do
        src="${item%%=*}"
        dest="$dir/${item#*=}"
        [ "$item" = "$src" ] && dest="$dir/$(basename "$src")"
        mkdir -p "$(dirname "$dest")"
        cp -al "$src" "$dest" 2>/dev/null || cp -a "$src" "$dest"
    done
    echo "$dir"
}

pom() {  # the value of a <property> in stack/**/pom.xml
    grep -rho "<$1>[^<]*</$1>" stack --include=pom.xml | head -n 1 | sed 's/<[^>]*>//g'
}
KAFKA_VERSION="$(pom kafka.version)"
DEBEZIUM_VERSION="$(pom debezium.version)"
APICURIO_VERSION="$(pom apicurio.version)"

step "base image"
docker/base/build-base.sh streaming-ml-base:bookworm

step "jars of stack/pom.xml in $DIST"
for needed in kafka plugins/debezium-connector-postgres plugins/debezium-connector-jdbc \
    plugins/apicurio-converter apicurio agents/jmx_prometheus_javaagent.jar; do
    [ -e "$DIST/$needed" ] || {
        echo "missing $DIST/$needed: run \`make stack-install\` (streaming-ml stack install)" >&2
        exit 1
    }
done

# The images whose inputs are large (a wheelhouse, a trained model) carry a label with the
# hash of their inputs and of the image they build on; when it matches, the image is
# current and nothing is fetched, trained or built (a fresh clone on a warm machine).
LABEL=org.streaming-ml.inputs
inputs() {  # inputs <parent image> <file or dir>... : the hash of everything an image is built from
    { docker image inspect -f '{{.Id}}' "$1"; shift
      find "$@" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; } |
        sha256sum | cut -c1-16
}
current() {  # current <image> <hash>
    [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)" = "$2" ] && {
        step "image $1 is current (inputs $2)"
    }
}

# Wheelhouses, one per image that installs from one, so a change to one lock rebuilds only its image. that installs from it, so a change to one lock rebuilds only its image.
wheelhouse() {  # wheelhouse <name> <lock>... : .stack/wheelhouse/<name>, refreshed when a lock changes
    local dir="$ROOT/.stack/wheelhouse/$1" lock
    shift
    local stamp="$dir/.locks-$(cat "$@" | sha256sum | cut -c1-16)"
    [ -f "$stamp" ] && return 0
    rm -rf "$dir"
    mkdir -p "$dir"
    for lock in "$@"; do
        "$BIN/pip" download --quiet --no-deps --require-hashes -r "$lock" -d "$dir"
    done
    touch "$stamp"
}
wheelhouse runtime requirements.lock docker/python/uv.lock
wheelhouse jupyter docker/jupyter/requirements.lock
# The runtime requirements of pyproject.toml (no dev extra): the wheelhouse has only the
# locked version of each, so that is what gets installed.
"$BIN/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$WORK/runtime.txt"

build streaming-ml-postgres:15 "$(stage postgres docker/postgres/Dockerfile \
    docker/postgres/postgres-entrypoint.sh)"
build streaming-ml-jre:17 "$(stage jre docker/jre/Dockerfile)"
build "streaming-ml-kafka:$KAFKA_VERSION" "$(stage kafka docker/kafka/Dockerfile \
    docker/kafka/kafka-entrypoint.sh docker/kafka/log4j2.xml "$DIST/kafka=kafka")"
build "streaming-ml-connect:$DEBEZIUM_VERSION" "$(stage connect docker/connect/Dockerfile \
    "$DIST/plugins=plugins" "$DIST/agents=agents" stack/jmx-exporter.yaml)"
build "streaming-ml-registry:$APICURIO_VERSION" "$(stage registry docker/registry/Dockerfile \
    "$DIST/apicurio=apicurio")"
build streaming-ml-adminer:bookworm "$(stage adminer docker/adminer/Dockerfile)"
hash="$(inputs streaming-ml-base:bookworm requirements.lock pyproject.toml docker/python)"
if ! current streaming-ml-python:3.11 "$hash"; then
    step "wheelhouse of requirements.lock (pip download --require-hashes)"
    wheelhouse runtime requirements.lock docker/python/uv.lock
    build streaming-ml-python:3.11 "$(stage python docker/python/Dockerfile \
        "$ROOT/.stack/wheelhouse/runtime=wheelhouse" "$WORK/runtime.txt" docker/python/uv.lock)" \
        --label "$LABEL=$hash"
fi
build "streaming-ml-app:$VERSION" "$(stage app docker/app/Dockerfile pyproject.toml service.py \
    debezium postgres src docker/app/streaming-ml docker/app/docker-entrypoint.sh)"
hash="$(inputs streaming-ml-python:3.11 docker/jupyter)"
if ! current "streaming-ml-jupyter:$VERSION" "$hash"; then
    step "wheelhouse of docker/jupyter/requirements.lock (pip download --require-hashes)"
    wheelhouse jupyter docker/jupyter/requirements.lock
    build "streaming-ml-jupyter:$VERSION" "$(stage jupyter docker/jupyter/Dockerfile \
        "$ROOT/.stack/wheelhouse/jupyter=wheelhouse" docker/jupyter/requirements.lock)" \
        --label "$LABEL=$hash"
fi
find "$WORK"/app/src -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true

# The Bento: a model trained on seeded synthetic data into a build-only model store,
# once (the same tag every time, so a warm build reuses it), packaged with the code.
hash="$(inputs streaming-ml-python:3.11 src service.py bentofile.yaml docker/service \
    docker/build-images.sh)"
if ! current "streaming-ml-service:$VERSION" "$hash"; then
    step "Bento ford-price-predictor:$VERSION"
    export BENTOML_HOME="$ROOT/.stack/images/bentoml" BENTOML_DO_NOT_TRACK=true
    MODEL="${SML_MODEL_NAME:-ford_price}:compose"
    if ! "$BIN/bentoml" models get "$MODEL" >/dev/null 2>&1; then
        "$BIN/streaming-ml" train --synthetic 20000 --seed 42 --tag compose >"$LOGS/train.log" 2>&1 \
            || { tail -n 20 "$LOGS/train.log"; exit 1; }
    fi
    "$BIN/bentoml" delete -y "ford-price-predictor:$VERSION" >/dev/null 2>&1 || true
    "$BIN/bentoml" build --version "$VERSION" >"$LOGS/bento.log" 2>&1 \
        || { tail -n 20 "$LOGS/bento.log"; exit 1; }
    step "image streaming-ml-service:$VERSION (bentoml containerize --backend docker)"
    t0=$SECONDS
    # From a scratch directory that is also TMPDIR: containerize re-reads the Bento's
    # Dockerfile template from a temporary copy and refuses paths outside the working
    # directory or with a hidden part (BentoML 1.4.40, utils/filesystem.py).
    scratch="$(mktemp -d /tmp/sml-containerize-XXXXXX)"
    (cd "$scratch" && TMPDIR="$scratch" nice "$BIN/bentoml" containerize \
        "ford-price-predictor:$VERSION" --backend docker --image-tag "streaming-ml-service:$VERSION" \
        --opt "label=$LABEL=$hash") \
        >"$LOGS/containerize.log" 2>&1 || { tail -n 30 "$LOGS/containerize.log"; rm -rf "$scratch"; exit 1; }
    rm -rf "$scratch"
    printf '        streaming-ml-service:%s: %s steps, %s cached, %s s\n' "$VERSION" \
        "$(grep -c 'Step [0-9]*/' "$LOGS/containerize.log" || true)" \
        "$(grep -c 'Using cache' "$LOGS/containerize.log" || true)" "$((SECONDS - t0))"
fi
step "all images built in $((SECONDS - started)) s"
