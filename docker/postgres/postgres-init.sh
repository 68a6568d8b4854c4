#!/bin/sh
# One-shot step of docker-compose.yml, the container twin of what `streaming-ml stack up`
# does after Postgres starts: (re)apply the numbered init SQL in postgres/ (idempotent, so
# a volume created by an older checkout gets new tables too) and give each role the
# password from the environment. The SQL in postgres/ deliberately holds no passwords.
set -eu

export PGHOST="${PGHOST:-postgres}" PGUSER=postgres PGPASSWORD="$POSTGRES_PASSWORD" PGCONNECT_TIMEOUT=5

for sql in "${SQL_DIR:-/sql}"/[0-9][0-9]-*.sql; do
    echo "postgres-init: applying $(basename "$sql")"
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -f "$sql"
done

# psql substitutes :'name' as a quoted literal only in script input, hence the heredoc.
# \getenv reads each password from the environment: never on a command line (`ps`).
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
\getenv app SML_PG_APP_PASSWORD
\getenv cdc SML_PG_SOURCE_PASSWORD
\getenv sink SML_PG_SINK_PASSWORD
\getenv registry SML_PG_REGISTRY_PASSWORD
ALTER ROLE cars_app PASSWORD :'app';
ALTER ROLE cars_cdc PASSWORD :'cdc';
ALTER ROLE cars_sink PASSWORD :'sink';
ALTER ROLE registry PASSWORD :'registry';
SQL
echo "postgres-init: roles and schema ready"
