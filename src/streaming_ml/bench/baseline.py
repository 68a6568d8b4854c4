"""The reference design this project replaces, measured on the same stack: a consumer that
calls the service once per change event with a JSON body and produces each prediction as
it comes (the shape of the original tutorial's bridge).

It has none of the bridge's machinery: no micro-batch, no transaction, no DLQ, no
backpressure. It is not a product; it is the yardstick ``streaming-ml bench --baseline``
holds our bridge against, on the same pre-filled change events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import requests
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer

from streaming_ml.config import Settings
from streaming_ml.errors import BenchError
from streaming_ml.kafka import clients
from streaming_ml.kafka.changes import parse_change
from streaming_ml.kafka.topics import ensure_topics
from streaming_ml.schema import avro
from streaming_ml.schema.listing import FEATURES
from streaming_ml.system.waits import Deadline


def predict_body(row: Mapping[str, Any]) -> dict[str, list[Any]]:
    """One listing as the `/predict` columns: each feature a one-value list."""
    return {name: [row.get(name)] for name in FEATURES}


def drain_per_event(
    settings: Settings,
    start: Mapping[int, int],
    rows: int,
    out_topic: str,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Read ``rows`` change events from ``start`` (partition -> offset), price each with
    one ``POST /predict`` and produce the answer to ``out_topic`` as it comes; the time
    from the first event read to the last prediction acknowledged."""
    # No broker creates a topic on first use: the yardstick's output is created like ours.
    ensure_topics(settings, {out_topic: {}})
    # The library's own deserializer, as the tutorial's consumer used it.
    decode = AvroDeserializer(
        avro.registry_client(settings.registry_url, settings.registry_basic_auth)
    )
    consumer = clients.consumer(
        settings, "sml-bench-baseline", {"isolation.level": "read_committed"}
    )
    producer = clients.producer(settings, {"linger.ms": 0})
    session = requests.Session()
    url = f"{settings.prediction_url}/predict"
    consumer.assign(
        [TopicPartition(settings.listings_topic, p, offset) for p, offset in start.items()]
    )
    priced = failed = 0
    first_read: float | None = None
    deadline = Deadline.after(timeout_s)
    try:
        while priced + failed < rows:
            if deadline.expired():
                raise BenchError(f"the baseline priced {priced} of {rows} in {timeout_s:g} s")
            msg = consumer.poll(1.0)
            if msg is None or ((e := msg.error()) and e.code() == KafkaError._PARTITION_EOF):
                continue
            if msg.error():
                raise BenchError(f"baseline consumer: {msg.error()}")
            first_read = first_read if first_read is not None else time.monotonic()
            change = parse_change(decode(msg.key(), None), decode(msg.value(), None))
            if change.row is None:
                continue
            answer = session.post(url, json=predict_body(change.row), timeout=10)
            if answer.status_code != 200:
                failed += 1
                continue
            value = {"listing_id": change.listing_id, "predicted_price": answer.json()[0]}
            producer.produce(out_topic, key=str(change.listing_id), value=json.dumps(value))
            producer.poll(0)
            priced += 1
        producer.flush(30)
        done = time.monotonic()
    finally:
        consumer.close()
        session.close()
    span = done - (first_read or done)
    return {
        "design": "one POST /predict per event, each prediction produced as it comes",
        "rows": rows,
        "priced": priced,
        "refused": failed,
        "first_read_to_last_ack_s": round(span, 3),
        "baseline_rows_per_s": round(priced / span, 1) if span > 0 else None,
    }
