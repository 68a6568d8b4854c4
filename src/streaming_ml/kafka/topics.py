"""The pipeline's topics: created with their partition counts, checked for co-partitioning."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.kafka import clients
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)


def pipeline_topics(settings: Settings) -> list[str]:
    return [
        settings.listings_topic,
        settings.predictions_topic,
        settings.dlq_topic,
        settings.shadow_topic,
        settings.outcomes_topic,
        settings.alerts_topic,
    ]


def ensure_topics(
    settings: Settings, extra: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, int]:
    """Create the pipeline's topics (and ``extra`` ones, with their configs) with
    ``settings.partitions`` partitions, keyed by listing id, so per-listing order holds
    in each, and ``settings.kafka_replication_factor`` replicas. Returns each topic's
    partition count.

    Existing topics are left as they are, even with fewer partitions: adding partitions
    moves keys to other partitions, and a listing's pending changes could then be read
    out of order. The bridge logs the difference and works with what exists.
    """
    admin = clients.admin(settings)
    # Broker append time makes a record's timestamp mean "reached Kafka", which is what
    # kafka_ts_ms and the benchmark's per-stage figures rely on.
    append_time = {"message.timestamp.type": "LogAppendTime", **settings.kafka_topic_configs()}
    configs = {t: append_time for t in pipeline_topics(settings)}
    configs.update({t: {**append_time, **config} for t, config in (extra or {}).items()})
    wanted = list(configs)
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=settings.partitions,
                replication_factor=settings.kafka_replication_factor,
                config=configs[t],
            )
            for t in wanted
        ]
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=30)
            logger.info("topic created", extra={"topic": topic, "partitions": settings.partitions})
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BridgeError(
                    f"cannot create topic {topic} on {settings.kafka_bootstrap}: {error}. "
                    "Is Kafka up? Try `streaming-ml stack status`."
                ) from error
    # A topic just created can take a moment to show in the metadata.
    deadline = Deadline.after(30.0)
    while True:
        metadata = admin.list_topics(timeout=30).topics
        if all(t in metadata for t in wanted) or deadline.expired():
            break
        deadline.sleep(0.2)
    counts = {t: len(metadata[t].partitions) for t in wanted if t in metadata}
    for topic, count in counts.items():
        if count != settings.partitions:
            logger.warning(
                "topic keeps its partition count (`streaming-ml topics migrate` repartitions it)",
                extra={"topic": topic, "partitions": count, "SML_PARTITIONS": settings.partitions},
            )
    return counts


def copartitioned(settings: Settings, counts: dict[str, int]) -> bool:
    """Whether the predictions and shadow topics have the change topic's partition count,
    so each prediction can go to its change's partition number (what the evaluator's
    per-partition join needs). Otherwise the default partitioner places them."""
    inputs = (settings.listings_topic, settings.predictions_topic, settings.shadow_topic)
    sizes = {counts.get(topic) for topic in inputs}
    if len(sizes) == 1 and None not in sizes:
        return True
    logger.warning(
        "predictions are not co-partitioned with the change topic: the evaluator cannot run",
        extra={"partitions": {topic: counts.get(topic) for topic in inputs}},
    )
    return False
