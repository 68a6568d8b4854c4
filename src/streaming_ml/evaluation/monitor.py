"""``streaming-ml monitor``: the running accuracy, label coverage, drift and alerts, read
from the topics the evaluators write (so it sees every partition, whichever process
owns it, and needs no evaluator to be reachable).

* the evaluator's changelog -> per partition, the snapshot of the running metrics per
  model tag and arm (written with the outcomes it covers), label coverage counts and
  drift scores; only each partition's latest record is decoded, so catching up costs
  what the state holds, not the outcomes topic's history;
* alerts topic -> the alerts raised;
* the model registry's log -> the online learner's counters as of its last snapshot
  (labels and records it skipped, outcomes retention deleted before it read them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from streaming_ml.config import Settings
from streaming_ml.errors import StackError
from streaming_ml.evaluation.accuracy import Scoreboard, coverage_of
from streaming_ml.evaluation.state import PARTITION_KEY
from streaming_ml.kafka import clients
from streaming_ml.kafka.loop import ConsumeLoop
from streaming_ml.kafka.offsets import partition_of
from streaming_ml.models.registry_state import LEARNER_COUNTERS, Aliases
from streaming_ml.schema import avro
from streaming_ml.system.clock import now_ms

RECENT_ALERTS = 20
COUNTER_HEADINGS = {
    "skipped_labels": "bad labels",
    "failed_records": "failed records",
    "retention_gaps": "retention gaps",
    "outcomes_lost": "outcomes lost",
}


class Monitor:
    """Follows the evaluation topics from their beginning; ``poll()`` folds what is new."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        self.scoreboard = Scoreboard(
            s.metrics_window_outcomes, s.metrics_window_minutes, s.degraded_threshold
        )
        self.partitions: dict[int, dict[str, Any]] = {}
        self._undecoded: dict[int, bytes] = {}  # partition records newer than ``partitions``
        self.alerts: list[dict[str, Any]] = []
        self.alert_count = 0
        self.registry = Aliases()
        self._decode = avro.writer_schema_deserializer(
            avro.registry_client(s.registry_url, s.registry_basic_auth)
        )
        consumer = clients.consumer(
            s,
            "streaming-ml-monitor",
            {"enable.partition.eof": True, "isolation.level": "read_committed"},
        )
        self._loop = ConsumeLoop(consumer, self._fold_all, batch_size=5_000)
        self._topics = (s.evaluator_state_topic, s.alerts_topic)
        self._assigned: list[TopicPartition] = []
        self._assign()

    def _assign(self) -> None:
        metadata = self._loop.consumer.list_topics(timeout=10).topics
        missing = [t for t in self._topics if t not in metadata]
        if missing:
            raise StackError(
                f"no evaluation topics yet ({', '.join(missing)}): start the evaluator "
                "(`streaming-ml evaluator`, or `streaming-ml demo` which starts it)."
            )
        # The registry's log is optional: without it there is no learner to show.
        topics = [*self._topics, *[t for t in (self.settings.model_events_topic,) if t in metadata]]
        self._assigned = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in topics
            for p in sorted(metadata[topic].partitions)
        ]
        self._loop.assign(self._assigned)

    @property
    def caught_up(self) -> bool:
        return len(self._loop.ends) == len(self._assigned)

    def poll(self, timeout_s: float = 0.5) -> int:
        return len(self._loop.poll(timeout_s))

    def read_to_end(self, timeout_s: float = 60.0) -> None:
        self._loop.run(timeout=timeout_s, until=lambda: self.caught_up)
        if not self.caught_up:
            raise StackError(
                f"could not read the evaluation topics to their end in {timeout_s:g} s; "
                "is Kafka up? Try `streaming-ml stack status`."
            )

    def _fold_all(self, batch: list[Message]) -> None:
        for msg in batch:
            self._fold(msg)

    def _fold(self, msg: Message) -> None:
        topic, value = msg.topic(), msg.value()
        if value is None:
            return
        if topic == self.settings.model_events_topic:
            self.registry.apply_record(value)
            return
        partition = partition_of(msg)[1]
        if topic == self.settings.evaluator_state_topic:
            if msg.key() == PARTITION_KEY:
                self._undecoded[partition] = value
        else:
            self.alert_count += 1
            self.alerts.append(self._decode(value, None))
            del self.alerts[:-RECENT_ALERTS]

    def _decode_partitions(self) -> None:
        for partition, value in self._undecoded.items():
            state = self.partitions[partition] = json.loads(value)
            self.scoreboard.restore_partition(partition, state.get("scores") or {})
        self._undecoded.clear()

    def coverage(self) -> dict[str, Any]:
        self._decode_partitions()
        return coverage_of(
            (state.get("predicted") or {}, state.get("labelled") or {})
            for state in self.partitions.values()
        )

    def learner(self) -> dict[str, Any] | None:
        """The online learner's counters from its newest published snapshot, or None."""
        name = self.settings.online_model_name
        for summary in reversed(self.registry.published.values()):
            if summary.tag.split(":")[0] == name and summary.learner is not None:
                return {"model_tag": summary.tag, **summary.learner}
        return None

    def snapshot(self) -> dict[str, Any]:
        self._decode_partitions()
        drift = {
            str(p): {
                "reference": (state.get("features") or {}).get("reference_tag"),
                "windows": (state.get("features") or {}).get("window", 0),
                "features": (state.get("features") or {}).get("last") or {},
                "prediction": (state.get("prediction") or {}).get("last") or {},
            }
            for p, state in sorted(self.partitions.items())
        }
        return {
            "pairs": self.scoreboard.snapshot(now_ms(), self.coverage()),
            "drift": drift,
            "alerts": {"count": self.alert_count, "recent": self.alerts},
            "learner": self.learner(),
            "registry_unreadable_events": self.registry.unreadable,
        }

    def close(self) -> None:
        self._loop.consumer.close()


def _money(value: float | None) -> str:
    return "-" if value is None else f"£{value:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render(snapshot: Mapping[str, Any]) -> Any:
    """The terminal view of a snapshot (rich renderables)."""
    accuracy = Table(title="Accuracy per model and arm (labels as they arrive)", expand=True)
    for column in ("model tag", "arm", "outcomes", "coverage", "MAE", "RMSE", "MAPE", "bias",
                   "MAE last N", "MAPE last N", "MAE last T", "lag p50", "lag p99"):  # fmt: skip
        accuracy.add_column(column, justify="left" if column in ("model tag", "arm") else "right")
    for entry in snapshot["pairs"].values():
        c, n, t = entry["cumulative"], entry["last_n"], entry["last_t"]
        lag = entry["label_lag_s"]
        accuracy.add_row(
            entry["model_tag"], entry["arm"], str(c["n"]), _pct(entry.get("label_coverage")),
            _money(c["mae"]), _money(c["rmse"]), _pct(c["mape"]), _money(c["bias"]),
            _money(n["mae"]), _pct(n["mape"]), _money(t["mae"]),
            "-" if lag["p50"] is None else f"{lag['p50']:.1f}s",
            "-" if lag["p99"] is None else f"{lag['p99']:.1f}s",
        )  # fmt: skip
    drift = Table(title="Drift: PSI of the last window per partition (alert > threshold)")
    drift.add_column("partition")
    names: list[str] = []
    for state in snapshot["drift"].values():
        for name in [*state["features"], *state["prediction"]]:
            if name not in names:
                names.append(name)
    for name in names:
        drift.add_column(name, justify="right")
    for partition, state in snapshot["drift"].items():
        scores = {**state["features"], **state["prediction"]}
        drift.add_row(
            partition,
            *(f"{scores[n]['psi']:.3f}" if n in scores else "-" for n in names),
        )
    alerts = Table(title=f"Alerts ({snapshot['alerts']['count']} raised; latest last)")
    alerts.add_column("kind")
    alerts.add_column("message")
    for alert in snapshot["alerts"]["recent"][-8:]:
        alerts.add_row(alert["kind"], alert["message"])
    unreadable = snapshot.get("registry_unreadable_events", 0)
    learner = Table(
        title="Online learner (as of its last snapshot): records skipped"
        + (f"; {unreadable} unreadable registry events skipped" if unreadable else ""),
        expand=True,
    )
    learner.add_column("model tag")
    for counter in LEARNER_COUNTERS:
        learner.add_column(COUNTER_HEADINGS[counter], justify="right")
    counts = snapshot.get("learner")
    if counts is not None:
        learner.add_row(counts["model_tag"], *(str(counts.get(k, 0)) for k in LEARNER_COUNTERS))
    return Group(accuracy, drift, alerts, learner)


def snapshot(settings: Settings, timeout_s: float = 60.0) -> dict[str, Any]:
    """Everything the evaluation topics hold so far (``streaming-ml monitor --json``)."""
    monitor = Monitor(settings)
    try:
        monitor.read_to_end(timeout_s)
        return monitor.snapshot()
    finally:
        monitor.close()


def watch(settings: Settings, refresh_s: float = 1.0) -> None:
    """The live terminal view, until Ctrl-C."""
    monitor = Monitor(settings)
    console = Console()
    try:
        with console.status("reading the evaluation topics..."):
            monitor.read_to_end()
        with Live(render(monitor.snapshot()), console=console, refresh_per_second=2) as live:
            while True:
                monitor.poll(timeout_s=refresh_s)
                live.update(render(monitor.snapshot()))
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
