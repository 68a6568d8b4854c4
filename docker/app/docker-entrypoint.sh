#!/bin/sh
# The processes that read Postgres (the dashboard, `connectors watch`) find the role
# passwords where the CLI looks for them, SML_STATE_DIR/secrets/passwords.json (0600,
# on the container's tmpfs); compose passes them as SML_PG_*/POSTGRES_PASSWORD variables.
set -eu
python -c 'from streaming_ml.stack.compose import write_state_from_env; write_state_from_env()'
exec "$@"
