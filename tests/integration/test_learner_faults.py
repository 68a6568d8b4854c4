"""The online learner against records it cannot learn, outcomes retention deleted, and a
second learner of the same model, on the real stack (its own outcomes topic and
registry; the outcomes are written here, the way the evaluator writes them)."""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import bentoml
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.serialization import MessageField, SerializationContext

from streaming_ml.config import Settings
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.errors import RegistryError
from streaming_ml.kafka import clients
from streaming_ml.models import registry
from streaming_ml.models.learner import Learner, LearnerStats
from streaming_ml.models.train import train_online_model
from streaming_ml.schema import avro
from streaming_ml.schema.fields import OUTCOME_FIELDS, OUTCOME_KEY_FIELDS
from streaming_ml.schema.listing import FEATURES
from streaming_ml.schema.outcome import Outcome
from tests.integration.following import own_registry
from tests.integration.pipeline import unique, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def learner_settings(stack_settings: Settings) -> Iterator[Settings]:
    name = unique("ford_online").replace("-", "_")
    settings = own_registry(stack_settings).model_copy(
        update={
            "online_model_name": name,
            "online_snapshot_labels": 10,
            "outcomes_topic": unique("car_price_outcomes"),
            "learner_group": unique("test-learner"),
        }
    )
    admin = clients.admin(settings)
    created = admin.create_topics([NewTopic(settings.outcomes_topic, num_partitions=1)])
    for future in created.values():
        future.result(timeout=30)
    train_online_model(name, None, 300, 12, "linear")
    yield settings
    for model in bentoml.models.list(name):
        bentoml.models.delete(model.tag)


class Outcomes:
    """Writes outcomes as the evaluator does (registry-framed Avro)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        client = avro.registry_client(settings.registry_url, settings.registry_basic_auth)
        self.key_ser, self.value_ser = avro.table_serializers(
            client, "CarPriceOutcome", "test outcomes", OUTCOME_FIELDS, OUTCOME_KEY_FIELDS
        )
        self.producer = clients.producer(settings, {"acks": "all"})
        self.rows = generate_listing_records(500, seed=7)
        self.written = 0

    def write(self, prices: list[float] | None = None, raw: bytes | None = None) -> None:
        topic = self.settings.outcomes_topic
        if raw is not None:
            self.producer.produce(topic, key=b"raw", value=raw)
        for price in prices or []:
            row = self.rows[self.written % len(self.rows)]
            outcome = Outcome(
                listing_id=self.written, model_tag="m:1", arm="champion", actual_price=price,
                predicted_price=10_000.0, priced_ts_ms=1, labelled_ts_ms=2, evaluated_ts_ms=3,
                features={f: row[f] for f in FEATURES},
            )  # fmt: skip
            value = outcome.record()
            key = {k: value[k] for k in OUTCOME_KEY_FIELDS}
            self.producer.produce(
                topic,
                key=self.key_ser(key, SerializationContext(topic, MessageField.KEY)),
                value=self.value_ser(value, SerializationContext(topic, MessageField.VALUE)),
            )
            self.written += 1
        assert self.producer.flush(30) == 0

    def good(self, count: int) -> list[float]:
        return [
            float(self.rows[(self.written + i) % len(self.rows)]["price"]) for i in range(count)
        ]


class Running:
    """A learner on a thread; ``error`` holds what stopped it, if anything did."""

    def __init__(self, settings: Settings) -> None:
        self.learner = Learner(settings)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.learner.run(timeout=120)
        except BaseException as error:
            self.error = error

    @property
    def stats(self) -> LearnerStats:
        return self.learner.stats

    def stop(self) -> LearnerStats:
        self.learner.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.stats


def newest_counters(settings: Settings) -> dict[str, Any]:
    aliases = registry.read_aliases(settings)
    versions = [s for t, s in aliases.published.items() if t.startswith(settings.online_model_name)]
    assert versions and versions[-1].learner is not None
    return {"tag": versions[-1].tag, **versions[-1].learner}


def test_bad_labels_and_unreadable_records_are_skipped_counted_and_never_stop_it(
    learner_settings: Settings,
) -> None:
    settings = learner_settings
    outcomes = Outcomes(settings)
    outcomes.write(outcomes.good(5))
    outcomes.write([0.0, math.nan, -3.0, 5e7])  # four labels no price can be
    outcomes.write(raw=b"not an outcome")  # a record that fails to decode
    outcomes.write(outcomes.good(5))
    running = Running(settings)
    wait_until(lambda: running.stats.outcomes >= 15 or running.error, 60, "15 outcomes read")
    stats = running.stop()
    assert running.error is None
    assert (stats.learned, stats.skipped_labels, stats.failed_records) == (10, 4, 1)
    counters = newest_counters(settings)
    assert counters["skipped_labels"] == 4 and counters["failed_records"] == 1

    # A restart resumes past the bad records and keeps counting over the lineage.
    outcomes.write([0.0, *outcomes.good(9)])
    running = Running(settings)
    wait_until(lambda: running.stats.outcomes >= 10 or running.error, 60, "10 more read")
    stats = running.stop()
    assert running.error is None
    assert (stats.learned, stats.skipped_labels, stats.failed_records) == (9, 1, 0)
    counters = newest_counters(settings)
    assert counters["skipped_labels"] == 5 and counters["failed_records"] == 1
    assert counters["retention_gaps"] == 0


def test_outcomes_deleted_by_retention_before_they_were_learned_are_reported(
    learner_settings: Settings,
) -> None:
    settings = learner_settings
    outcomes = Outcomes(settings)
    outcomes.write(outcomes.good(10))
    running = Running(settings)
    wait_until(lambda: running.stats.snapshots >= 1 or running.error, 60, "a snapshot")
    running.stop()
    outcomes.write(outcomes.good(30))
    # What retention does to old segments: the partition's oldest offset moves on.
    admin = clients.admin(settings)
    done = admin.delete_records([TopicPartition(settings.outcomes_topic, 0, 25)])
    for future in done.values():
        future.result(timeout=30)
    running = Running(settings)
    wait_until(lambda: running.stats.outcomes >= 15 or running.error, 60, "the rest read")
    stats = running.stop()
    assert running.error is None
    assert (stats.retention_gaps, stats.outcomes_lost, stats.learned) == (1, 15, 15)
    assert newest_counters(settings)["outcomes_lost"] == 15


def test_a_second_learner_fences_the_first_so_the_model_never_forks(
    learner_settings: Settings,
) -> None:
    settings = learner_settings
    outcomes = Outcomes(settings)
    outcomes.write(outcomes.good(10))
    first = Running(settings)
    wait_until(lambda: first.stats.snapshots >= 1 or first.error, 60, "the first's snapshot")
    assert first.error is None, "".join(traceback.format_exception(first.error))
    second = Running(settings)
    wait_until(lambda: second.learner.ready.is_set() or second.error, 60, "the second started")
    before = newest_counters(settings)["tag"]
    # Both read these; only the second may publish what it learns from them.
    outcomes.write(outcomes.good(10))
    wait_until(lambda: first.error is not None, 60, "the first learner fenced")
    why = "".join(traceback.format_exception(first.error))
    assert isinstance(first.error, RegistryError) and "took over" in str(first.error), why
    wait_until(lambda: second.stats.snapshots >= 1 or second.error, 60, "the second's snapshot")
    second.stop()
    assert second.error is None
    aliases = registry.read_aliases(settings)
    versions = [t for t in aliases.published if t.startswith(settings.online_model_name)]
    # One lineage: the first's version, then the second's; none of the fenced learner's.
    assert versions[-2:] == [before, second.stats.tag]
    assert (
        int(bentoml.models.get(second.stats.tag).info.metadata["learned"])
        == int(bentoml.models.get(before).info.metadata["learned"]) + 10
    )
