"""The bridge: Debezium change events in, price predictions out.

One loop, shaped like confluent-kafka-python's consumer examples:

1. collect a micro-batch (up to ``batch_max_events`` or ``batch_linger_ms``);
2. decode each event with the registry; undecodable or unpriceable rows go to the
   dead-letter topic with their original bytes and a reason;
3. skip updates whose features did not change (features hash), price the rest in
   one ``/predict_batch`` call, retrying with backoff and pausing the partitions
   while the service is down;
4. produce one prediction (or a tombstone for a delete) per listing, wait for the
   broker's acknowledgements, and only then commit the consumed offsets.

A crash anywhere before the commit means redelivery; the JDBC sink upserts by
``listing_id``, so a redelivered event rewrites the same row.

The code: ``batch`` (the Kafka-free decisions), ``metrics``, ``watchdog`` (restarts
FAILED connectors) and ``runner`` (the Bridge and ``run_bridge``).
"""

from streaming_ml.bridge.batch import (
    Action,
    Change,
    backoff_delays,
    dlq_headers,
    dlq_reason,
    features_hash,
    offsets_to_commit,
    parse_change,
    plan_actions,
    prediction_record,
    registry_unavailable,
    service_records,
)
from streaming_ml.bridge.metrics import BridgeMetrics, BridgeStats
from streaming_ml.bridge.runner import Bridge, run_bridge
from streaming_ml.bridge.watchdog import ConnectorWatchdog

__all__ = [
    "Action",
    "Bridge",
    "BridgeMetrics",
    "BridgeStats",
    "Change",
    "ConnectorWatchdog",
    "backoff_delays",
    "dlq_headers",
    "dlq_reason",
    "features_hash",
    "offsets_to_commit",
    "parse_change",
    "plan_actions",
    "prediction_record",
    "registry_unavailable",
    "run_bridge",
    "service_records",
]
