"""The bridge: Debezium change events in, price predictions out.

One loop (``loop.Bridge``), shaped like confluent-kafka-python's consumer examples and
quix-streams' application loop, with each step a collaborator of its own:

1. **collect** a micro-batch (``batch_max_events`` or ``batch_linger_ms``);
2. **decode** each event with the registry (``changes``) and **plan** it (``plan``):
   price, tombstone, skip a price-only update, or dead-letter with a reason;
3. **price** the batch (``pricing``): answers classified, retries, bisection of
   rejected or failing records, per-record strikes, backpressure;
4. **publish** predictions, DLQ records and the consumed offsets in one Kafka
   transaction (``output``), fenced by the consumer group's generation.

``offsets`` computes commit and rewind points, ``kafka_setup`` the topics and client
configurations, ``metrics`` the Prometheus registry and the time of each step.
``reprice`` is `streaming-ml reprice`: every listing priced again through this loop.
See docs/bridge.md.
"""

from streaming_ml.bridge.loop import Bridge, run_bridge
from streaming_ml.bridge.metrics import BridgeMetrics, BridgeStats
from streaming_ml.bridge.plan import Action, plan_actions, prediction_record
from streaming_ml.kafka.changes import Change, parse_change
from streaming_ml.schema.listing import features_hash

__all__ = [
    "Action",
    "Bridge",
    "BridgeMetrics",
    "BridgeStats",
    "Change",
    "features_hash",
    "parse_change",
    "plan_actions",
    "prediction_record",
    "run_bridge",
]
