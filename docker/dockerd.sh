#!/usr/bin/env bash
# Start dockerd when no daemon answers (as root), and wait until it does (up to 60 s).
# Prints the daemon's pid when it started one, nothing when one was already running.
set -euo pipefail
docker info >/dev/null 2>&1 && exit 0
[ "$(id -u)" = 0 ] || { echo "no Docker daemon answers and this is not root: start dockerd" >&2; exit 1; }
log="${SML_DOCKERD_LOG:-/var/log/streaming-ml-dockerd.log}"
setsid dockerd >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 120); do
    if docker info >/dev/null 2>&1; then echo "$pid"; exit 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
done
echo "dockerd did not answer within 60 s; its log ($log):" >&2
tail -n 20 "$log" >&2
exit 1
