#!/bin/sh
# `kafka`:   KAFKA_<NAME> -> <name> in server.properties (lower case, `_` -> `.`), the
#            log dir formatted once with CLUSTER_ID, then the broker.
# `connect`: CONNECT_<NAME> -> the distributed worker's properties, then the worker.
# JAVA_OPTS holds the JVM options (docker-compose.yml sets the local stack's).
set -eu
conf="${SML_CONF_DIR:-/tmp}"
cp="/opt/kafka/libs/*"
log4j="-Dlog4j2.configurationFile=/opt/kafka/log4j2.xml"

properties() {  # $1: variable prefix
    env | grep "^$1" | sort | while IFS='=' read -r name value; do
        key="$(printf '%s' "${name#"$1"}" | tr 'A-Z_' 'a-z.')"
        printf '%s=%s\n' "$key" "$value"
    done
}

case "${1:-kafka}" in
kafka)
    props="$conf/server.properties"
    properties KAFKA_ >"$props"
    dir="$(sed -n 's/^log\.dirs=//p' "$props")"
    if [ ! -f "$dir/meta.properties" ]; then
        : "${CLUSTER_ID:?CLUSTER_ID is not set}"
        # shellcheck disable=SC2086
        java $JAVA_OPTS "$log4j" -cp "$cp" kafka.tools.StorageTool format \
            --cluster-id="$CLUSTER_ID" -c "$props"
    fi
    # shellcheck disable=SC2086
    exec java $JAVA_OPTS "$log4j" -cp "$cp" kafka.Kafka "$props"
    ;;
connect)
    props="$conf/connect-distributed.properties"
    properties CONNECT_ >"$props"
    # shellcheck disable=SC2086
    exec java $JAVA_OPTS "$log4j" -cp "$cp" org.apache.kafka.connect.cli.ConnectDistributed "$props"
    ;;
*)
    exec "$@"
    ;;
esac
