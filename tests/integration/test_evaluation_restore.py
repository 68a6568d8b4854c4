"""The evaluator's restart costs what its state holds, not what the outcomes topic has
accumulated: with two million outcomes on the topic and the changelog snapshot that
covers them, a new evaluator is consuming again in seconds, with the metrics of all
two million outcomes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from confluent_kafka.serialization import MessageField, SerializationContext

from streaming_ml.config import Settings
from streaming_ml.evaluation import monitor
from streaming_ml.evaluation.accuracy import Scoreboard
from streaming_ml.evaluation.evaluator import Evaluator
from streaming_ml.evaluation.outcomes import pair_key
from streaming_ml.evaluation.publishing import Publisher
from streaming_ml.evaluation.state import CHANGELOG_CONFIG, new_partition
from streaming_ml.kafka import clients
from streaming_ml.kafka import topics as topics_mod
from streaming_ml.schema import avro
from streaming_ml.schema.outcome import Outcome
from tests.integration.pipeline import in_thread, wait_until
from tests.integration.test_evaluation import evaluation_settings, evaluator_starts_at_end

pytestmark = pytest.mark.integration

OUTCOMES = 2_000_000
DISTINCT = 1_000  # distinct records, repeated: serialized once, produced in bulk
PAIRS = (("m:1", "champion"), ("m:2", "challenger"), ("m:1", "shadow"))
RESTART_LIMIT_S = 10.0


def distinct_outcomes(settings: Settings) -> list[tuple[int, Outcome]]:
    rng = np.random.default_rng(21)
    now = int(time.time() * 1000)
    found = []
    for i in range(DISTINCT):
        tag, arm = PAIRS[i % len(PAIRS)]
        actual = float(rng.uniform(2_000, 40_000))
        predicted = max(1.0, actual + float(rng.normal(300, 1_500)))
        outcome = Outcome(
            listing_id=i, model_tag=tag, arm=arm, actual_price=actual,
            predicted_price=predicted, priced_ts_ms=now - 2_000, labelled_ts_ms=now - 1_000,
            evaluated_ts_ms=now,
        )  # fmt: skip
        found.append((i % settings.partitions, outcome))
    return found


def produce_outcomes(settings: Settings, base: list[tuple[int, Outcome]]) -> None:
    """``OUTCOMES`` outcome records, each of ``base`` in turn, Avro-framed as the
    evaluator writes them, through a plain producer with big batches."""
    schemas = avro.registry_client(settings.registry_url)
    records = Publisher(settings, schemas).records(base, [], [], Scoreboard(1, 1.0, 1.0))
    producer = clients.producer(
        settings,
        {
            "linger.ms": 200, "batch.size": 4_000_000, "compression.type": "lz4",
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
        },
    )  # fmt: skip
    for j in range(OUTCOMES):
        record = records[j % DISTINCT]
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, partition=record.partition)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(120) == 0, "outcomes not all delivered"


def write_snapshot(settings: Settings, base: list[tuple[int, Outcome]]) -> Scoreboard:
    """The changelog as an evaluator that handled those outcomes leaves it: each
    partition's record with the snapshot of its running metrics."""
    s = settings
    scores = Scoreboard(s.metrics_window_outcomes, s.metrics_window_minutes, s.degraded_threshold)
    for j in range(OUTCOMES):
        partition, outcome = base[j % DISTINCT]
        scores.add(outcome, partition)
    producer = clients.producer(settings)
    for number in range(settings.partitions):
        state = new_partition(settings, number)
        state.changed = True
        for record in state.changelog(settings.evaluator_state_topic, scores):
            producer.produce(record.topic, record.value, record.key, partition=record.partition)
    assert producer.flush(30) == 0
    return scores


def expected_cumulative(base: list[tuple[int, Outcome]], pair: str) -> dict[str, Any]:
    """The metrics of the pair computed afresh from every outcome produced."""
    repeats = np.bincount(np.arange(OUTCOMES) % DISTINCT, minlength=DISTINCT)
    mine = [
        (o.error, abs(o.error) / o.actual_price, repeats[i])
        for i, (_p, o) in enumerate(base)
        if pair_key(o.model_tag, o.arm) == pair
    ]
    errors = np.repeat([e for e, _a, _r in mine], [r for _e, _a, r in mine])
    apes = np.repeat([a for _e, a, _r in mine], [r for _e, _a, r in mine])
    return {
        "n": int(errors.size),
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mape": float(np.mean(apes)),
        "bias": float(np.mean(errors)),
    }


def test_a_restart_over_two_million_outcomes_consumes_again_in_seconds_with_all_their_metrics(
    stack_settings: Settings,
) -> None:
    settings = evaluation_settings(stack_settings, stack_settings.service_url)
    topics_mod.ensure_topics(settings, {settings.evaluator_state_topic: CHANGELOG_CONFIG})
    evaluator_starts_at_end(settings)
    base = distinct_outcomes(settings)
    started = time.monotonic()
    produce_outcomes(settings, base)
    produced_s = time.monotonic() - started
    write_snapshot(settings, base)
    print(f"produced {OUTCOMES} outcomes in {produced_s:.1f} s")

    evaluator = Evaluator(settings)
    started = time.monotonic()
    with in_thread("test-evaluator", evaluator.run, evaluator.assigned, evaluator.stop):
        restarted_s = time.monotonic() - started
        # Consuming: a record on an input (a withdrawn prediction) is handled.
        key_serializer, _value = avro.prediction_serializers(
            avro.registry_client(settings.registry_url)
        )
        key = key_serializer(
            {"listing_id": 1}, SerializationContext(settings.predictions_topic, MessageField.KEY)
        )
        producer = clients.producer(settings)
        producer.produce(settings.predictions_topic, None, key, partition=0)
        assert producer.flush(30) == 0
        wait_until(lambda: evaluator.stats.events >= 1, 30, "the evaluator handles a record")
        consuming_s = time.monotonic() - started
        shown = evaluator.snapshot()["pairs"]
    print(f"restarted in {restarted_s:.1f} s, consuming in {consuming_s:.1f} s")
    assert restarted_s < RESTART_LIMIT_S
    assert evaluator.stats.restores == 1
    watched = monitor.snapshot(settings)["pairs"]
    assert sum(entry["cumulative"]["n"] for entry in shown.values()) == OUTCOMES
    for tag, arm in PAIRS:
        pair = pair_key(tag, arm)
        expected = expected_cumulative(base, pair)
        assert shown[pair]["cumulative"] == pytest.approx(expected, rel=1e-9)
        assert watched[pair]["cumulative"] == pytest.approx(expected, rel=1e-9)
