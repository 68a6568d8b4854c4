"""What the model registry's log says, as data: the events, their fold into aliases and
published versions, which versions retire, and the promotion gate over model summaries.

No Kafka here: ``registry`` reads and writes the topics and folds what it reads with
these, so every reader (services, CLI, learner, dashboard, ``monitor``) agrees.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from streaming_ml.models.features import INPUT_NAMES

logger = logging.getLogger(__name__)

EventKind = Literal[
    "published",
    "claimed",
    "promoted",
    "rolled_back",
    "experiment_started",
    "experiment_stopped",
    "retired",
]
# The online learner's counters a snapshot carries in its metadata (``learner``),
# cumulative over the model's lineage: what it skipped and what it never saw.
LEARNER_COUNTERS = ("skipped_labels", "failed_records", "retention_gaps", "outcomes_lost")


class ModelSummary(BaseModel):
    """What the registry keeps about a published model (from its BentoML metadata)."""

    tag: str
    created_at: str = ""
    source: str = ""
    inputs: list[str] = Field(default_factory=list)
    cv: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    size_bytes: int = 0
    # Where the export sits on the models topic: fetch() reads that one record.
    partition: int | None = None
    offset: int | None = None
    # The online learner's counters (records it skipped), cumulative over its lineage.
    learner: dict[str, int] | None = None


class ModelEvent(BaseModel):
    kind: EventKind
    tag: str | None = None
    challenger: str | None = None
    split_percent: float = 0.0
    shadow: str | None = None
    forced: bool = False
    summary: ModelSummary | None = None
    at: float = Field(default_factory=time.time)
    by: str = Field(default_factory=lambda: f"{getpass.getuser()}@{socket.gethostname()}")
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    """A challenger takes ``split_percent`` of the listings; a shadow prices all of them."""

    challenger: str | None = None
    split_percent: float = 0.0
    shadow: str | None = None

    def tags(self) -> list[str]:
        return [t for t in (self.challenger, self.shadow) if t]


@dataclass
class Aliases:
    """The registry's state: a fold over the event log, in log order."""

    champions: list[str] = field(default_factory=list)
    experiment: Experiment | None = None
    published: dict[str, ModelSummary] = field(default_factory=dict)
    history: list[ModelEvent] = field(default_factory=list)
    retired: set[str] = field(default_factory=set)
    unreadable: int = 0  # events skipped because they are not a ModelEvent

    @property
    def champion(self) -> str | None:
        return self.champions[-1] if self.champions else None

    @property
    def previous_champion(self) -> str | None:
        return self.champions[-2] if len(self.champions) > 1 else None

    def apply(self, event: ModelEvent) -> None:
        self.history.append(event)
        if event.kind == "published" and event.summary is not None:
            self.published[event.summary.tag] = event.summary
            self.retired.discard(event.summary.tag)  # published again
        elif event.kind == "claimed" and event.tag and not self.champions:
            # Several replicas may claim at once; the first claim in the log wins.
            self.champions.append(event.tag)
        elif event.kind == "promoted" and event.tag:
            self.champions.append(event.tag)
        elif event.kind == "rolled_back" and len(self.champions) > 1:
            self.champions.pop()
        elif event.kind == "experiment_started":
            self.experiment = Experiment(event.challenger, event.split_percent, event.shadow)
        elif event.kind == "experiment_stopped":
            self.experiment = None
        elif event.kind == "retired" and event.tag:
            self.published.pop(event.tag, None)
            self.retired.add(event.tag)

    def apply_record(self, value: bytes | None) -> ModelEvent | None:
        """Apply one record of the events log; the event, or None when the record is a
        tombstone or is skipped (and counted) as unreadable."""
        if value is None:
            return None
        event = parse_event(value)
        if event is None:
            self.unreadable += 1
            return None
        self.apply(event)
        return event

    def aliased(self) -> set[str]:
        """Every tag an alias names: champion, previous, challenger, shadow."""
        tags = {self.champion, self.previous_champion}
        if self.experiment is not None:
            tags |= set(self.experiment.tags())
        return {t for t in tags if t}

    def wanted_tags(self) -> list[str]:
        """Every model the service must hold: champion first, then experiment models."""
        tags = [self.champion] if self.champion else []
        if self.experiment is not None:
            tags += [t for t in self.experiment.tags() if t not in tags]
        return tags

    def aliases_of(self, tag: str) -> list[str]:
        names = []
        if tag == self.champion:
            names.append("champion")
        if tag == self.previous_champion:
            names.append("previous")
        if self.experiment is not None:
            if tag == self.experiment.challenger:
                names.append(f"challenger ({self.experiment.split_percent:g}%)")
            if tag == self.experiment.shadow:
                names.append("shadow")
        return names


def parse_event(value: bytes) -> ModelEvent | None:
    """The event a record holds, or None (logged) when it holds none: one malformed
    record must not stop every reader of the log."""
    try:
        return ModelEvent.model_validate_json(value)
    except ValueError as error:
        logger.error("unreadable registry event skipped", extra={"error": str(error)[:300]})
        return None


def retired_tags(aliases: Aliases, name: str, keep: int) -> list[str]:
    """The published versions of ``name`` to retire: all but the newest ``keep`` (in
    the order they were published), except those an alias names."""
    versions = [t for t in aliases.published if t.split(":")[0] == name]
    protected = aliases.aliased()
    return [t for t in versions[: max(len(versions) - keep, 0)] if t not in protected]


def fold(events: list[ModelEvent]) -> Aliases:
    aliases = Aliases()
    for event in events:
        aliases.apply(event)
    return aliases


def gate(candidate: ModelSummary, champion: ModelSummary | None) -> list[str]:
    """Why ``candidate`` may not replace ``champion`` (empty: it may).

    Offline metrics are compared only under the same protocol: both cross-validated with
    the same folds and seed on the same data (fingerprint), else the comparison says
    nothing and the promotion needs ``--force``. A schema mismatch is never forceable
    (see ``schema_problem``)."""
    if champion is None or champion.tag == candidate.tag:
        return []
    mine, theirs = candidate.cv, champion.cv
    if not mine or not theirs:
        which = candidate.tag if not mine else champion.tag
        return [
            f"{which} has no stored cross-validation metrics to compare (train with --cv-folds)"
        ]
    same = ("folds", "seed", "data_fingerprint_sha256")
    differing = [k for k in same if mine.get(k) != theirs.get(k)]
    if differing:
        return [
            f"offline metrics not comparable: {', '.join(differing)} differ "
            f"({candidate.tag} vs champion {champion.tag})"
        ]
    if float(mine["rmse"]) > float(theirs["rmse"]):
        return [
            f"CV RMSE {float(mine['rmse']):,.1f} is worse than champion {champion.tag}'s "
            f"{float(theirs['rmse']):,.1f}"
        ]
    return []


def schema_problem(candidate: ModelSummary) -> str | None:
    """Why the service could not use this model's inputs, or None."""
    if candidate.inputs != list(INPUT_NAMES):
        return (
            f"{candidate.tag} takes inputs {candidate.inputs}, the pipeline sends "
            f"{list(INPUT_NAMES)}; retrain it with this version of `streaming-ml train`"
        )
    return None
