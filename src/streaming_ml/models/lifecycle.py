"""``streaming-ml model`` and ``streaming-ml experiment``: the registry's commands.

Each command reads the registry's log (``streaming_ml.registry``), checks what it is
asked against the current aliases, publishes the models it names (so any replica can
import them) and appends one event. The services pick the change up by themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from streaming_ml.config import Settings
from streaming_ml.datasets.load import connect, table_columns
from streaming_ml.errors import ModelNotFoundError, RegistryError
from streaming_ml.models import registry
from streaming_ml.models.features import FEATURE_OF_INPUT
from streaming_ml.models.registry_state import (
    Aliases,
    ModelEvent,
    ModelSummary,
    gate,
    schema_problem,
)
from streaming_ml.models.store import without_paths
from streaming_ml.schema.listing import FEATURES, table_problems
from streaming_ml.stack import postgres_dsn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRow:
    summary: ModelSummary
    aliases: list[str]
    local: bool
    published: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary.model_dump(),
            "aliases": self.aliases,
            "local": self.local,
            "published": self.published,
        }


def _local_summaries(settings: Settings) -> dict[str, ModelSummary]:
    return {
        str(m.tag): registry.summarise(m) for m in registry.iter_local_models(settings.model_name)
    }


def model_rows(settings: Settings) -> tuple[list[ModelRow], Aliases | None, str | None]:
    """Every model in the local store or the registry, oldest first; the aliases (None
    and the reason when Kafka cannot be reached)."""
    local = _local_summaries(settings)
    try:
        aliases: Aliases | None = registry.read_aliases(settings, timeout_s=15)
        problem = None
    except RegistryError as error:
        aliases, problem = None, str(error)
    published = aliases.published if aliases is not None else {}
    tags = sorted(
        set(local) | set(published),
        key=lambda t: (local.get(t) or published[t]).created_at,
    )
    rows = [
        ModelRow(
            summary=local.get(tag) or published[tag],
            aliases=aliases.aliases_of(tag) if aliases is not None else [],
            local=tag in local,
            published=tag in published,
        )
        for tag in tags
    ]
    return rows, aliases, problem


def describe(settings: Settings, tag: str) -> dict[str, Any]:
    """One model's registry facts, its aliases and the events that named it (its full
    metadata too when it is in the local store)."""
    aliases = registry.read_aliases(settings, timeout_s=15)
    summary = _summary_of(tag, aliases)
    tag = summary.tag
    events = [
        e.model_dump(exclude={"summary"})
        for e in aliases.history
        if tag in (e.tag, e.challenger, e.shadow)
    ]
    return {
        **summary.model_dump(),
        "aliases": aliases.aliases_of(tag),
        "metadata": _local_metadata(tag),
        "events": events,
    }


def _local_metadata(tag: str) -> dict[str, Any] | None:

    try:
        return without_paths(dict(bentoml.models.get(tag).info.metadata))
    except NotFound:
        return None


def _summary_of(tag: str, aliases: Aliases) -> ModelSummary:

    try:
        return registry.summarise(bentoml.models.get(tag))
    except NotFound:
        if tag in aliases.published:
            return aliases.published[tag]
    raise ModelNotFoundError(
        f"no model {tag} in the local store or the registry; train one with "
        "`streaming-ml train` or see `streaming-ml model list`"
    )


def listing_columns(settings: Settings) -> dict[str, str]:
    """The listings table's columns as they are now, with their types (read as the
    reader role)."""
    conn = connect(postgres_dsn(settings, "reader"))
    try:
        return table_columns(conn, settings.listings_table)
    finally:
        conn.close()


def table_problem(table: str, columns: Mapping[str, str], summary: ModelSummary) -> str | None:
    """Why the listings table with these columns cannot feed this model: the features it
    takes that are no longer columns (dropped, renamed) or no longer of a usable type."""
    wanted = {FEATURE_OF_INPUT.get(name, name) for name in summary.inputs}
    problems = table_problems(columns, [name for name in FEATURES if name in wanted])
    if not problems:
        return None
    return (
        f"{summary.tag} prices from features that {table} no longer has: "
        f"{'; '.join(problems)}. Every listing would be dead-lettered; restore the columns "
        "first (docs/schema-evolution.md)"
    )


def _usable(
    settings: Settings, tag: str, aliases: Aliases, columns: Mapping[str, str]
) -> ModelSummary:
    """The model's summary once its schema fits the pipeline and the listings table (as
    ``columns``, read once per command), and it is published; else RegistryError."""
    summary = _summary_of(tag, aliases)
    problem = schema_problem(summary) or table_problem(settings.listings_table, columns, summary)
    if problem is not None:
        raise RegistryError(f"refused: {problem}")
    if summary.tag not in aliases.published:
        registry.publish(settings, summary.tag, aliases)
    return summary


def promote(settings: Settings, tag: str, force: bool = False) -> tuple[str, str | None]:
    """Make ``tag`` the champion; return (new, previous). The gate (offline metrics under
    the same protocol) can be overridden with ``force``; a schema mismatch cannot."""
    aliases = registry.read_aliases(settings)
    candidate = _summary_of(tag, aliases)
    previous = aliases.champion
    champion = _summary_of(previous, aliases) if previous else None
    reasons = gate(candidate, champion)
    if reasons and not force:
        raise RegistryError(
            f"refused to promote {candidate.tag}: {'; '.join(reasons)}. "
            "Use --force to promote it anyway."
        )
    _usable(settings, candidate.tag, aliases, listing_columns(settings))
    note = f"forced past: {'; '.join(reasons)}" if reasons else ""
    registry.append_event(
        settings,
        ModelEvent(kind="promoted", tag=candidate.tag, forced=bool(reasons), note=note),
    )
    return candidate.tag, previous


def rollback(settings: Settings) -> tuple[str, str]:
    """Bring the previous champion back; return (restored, retired)."""
    aliases = registry.read_aliases(settings)
    current, previous = aliases.champion, aliases.previous_champion
    if current is None or previous is None:
        raise RegistryError(
            "nothing to roll back to: the registry has "
            + ("no champion yet" if current is None else f"only ever had {current} as champion")
        )
    registry.append_event(settings, ModelEvent(kind="rolled_back", tag=previous, note=current))
    return previous, current


def start_experiment(
    settings: Settings, challenger: str | None, split_percent: float, shadow: str | None
) -> ModelEvent:
    if challenger is None and shadow is None:
        raise RegistryError("an experiment needs --challenger TAG (with --split) or --shadow TAG")
    if not 0 <= split_percent <= 100:
        raise RegistryError(f"--split is a percentage of listings: 0..100, not {split_percent}")
    if challenger is not None and split_percent == 0:
        raise RegistryError("--challenger needs --split PERCENT above 0")
    aliases = registry.read_aliases(settings)
    if aliases.champion is None:
        raise RegistryError(
            "no champion yet: start a service once (it claims its model) or promote one first"
        )
    columns = listing_columns(settings)
    event = ModelEvent(
        kind="experiment_started",
        challenger=_usable(settings, challenger, aliases, columns).tag if challenger else None,
        split_percent=split_percent if challenger else 0.0,
        shadow=_usable(settings, shadow, aliases, columns).tag if shadow else None,
    )
    registry.append_event(settings, event)
    return event


def stop_experiment(settings: Settings) -> bool:
    """Stop the running experiment; False if none ran."""
    aliases = registry.read_aliases(settings)
    if aliases.experiment is None:
        return False
    registry.append_event(settings, ModelEvent(kind="experiment_stopped"))
    return True
