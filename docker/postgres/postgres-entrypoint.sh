#!/bin/sh
# initdb on an empty volume (SCRAM for every login; the superuser's password from
# POSTGRES_PASSWORD, read from a pipe, never from the command line), then the server.
# The schema, the roles and their passwords are applied by the postgres-init step of
# docker-compose.yml on every start, as `streaming-ml stack up` does locally.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set: run 'streaming-ml compose init' first}"
    echo "postgres-entrypoint: initdb in $PGDATA"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username=postgres --pwfile="$pwfile" --auth=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
fi
unset POSTGRES_PASSWORD
exec "$@"
