"""Which published versions the registry retires, unreadable events, which labels the
online learner refuses to learn, and how `monitor` shows what it skipped."""

from __future__ import annotations

import math

import pytest

from streaming_ml.models.learner import label_problem
from streaming_ml.models.registry_state import (
    Aliases,
    ModelEvent,
    ModelSummary,
    fold,
    parse_event,
    retired_tags,
)


def published(tag: str) -> ModelEvent:
    return ModelEvent(kind="published", tag=tag, summary=ModelSummary(tag=tag))


def test_all_but_the_newest_versions_are_retired() -> None:
    aliases = fold([published(f"m:{i}") for i in range(8)])
    assert retired_tags(aliases, "m", keep=5) == ["m:0", "m:1", "m:2"]
    assert retired_tags(aliases, "m", keep=8) == []


def test_a_version_an_alias_names_is_never_retired() -> None:
    events = [published(f"m:{i}") for i in range(10)]
    events += [
        ModelEvent(kind="promoted", tag="m:1"),  # previous
        ModelEvent(kind="promoted", tag="m:2"),  # champion
        ModelEvent(kind="experiment_started", challenger="m:3", split_percent=10, shadow="m:4"),
    ]
    aliases = fold(events)
    assert retired_tags(aliases, "m", keep=2) == ["m:0", "m:5", "m:6", "m:7"]


def test_other_model_names_keep_their_own_versions() -> None:
    aliases = fold([published(f"{name}:{i}") for i in range(4) for name in ("a", "b")])
    assert retired_tags(aliases, "a", keep=1) == ["a:0", "a:1", "a:2"]
    assert all(t.startswith("a:") for t in retired_tags(aliases, "a", keep=1))


def test_a_retired_version_is_no_longer_published_and_not_retired_twice() -> None:
    aliases = fold([published(f"m:{i}") for i in range(3)])
    aliases.apply(ModelEvent(kind="retired", tag="m:0"))
    assert list(aliases.published) == ["m:1", "m:2"]
    assert retired_tags(aliases, "m", keep=2) == []


def test_an_unreadable_event_is_skipped_and_counted() -> None:
    aliases = Aliases()
    assert parse_event(b'{"kind": "exploded"}') is None
    for record in (b"{not json", b'{"kind": "promoted", "tag": "m:1"}', b'{"kind": 3}', None):
        aliases.apply_record(record)
    assert aliases.champion == "m:1"
    assert aliases.unreadable == 2
    assert len(aliases.history) == 1


@pytest.mark.parametrize("price", [0.0, -5.0, math.nan, math.inf, -math.inf, 0.5, 1e9])
def test_a_label_that_is_not_a_plausible_price_is_refused(price: float) -> None:
    assert label_problem(price) is not None


@pytest.mark.parametrize("price", [1.0, 12_500.0, 1_000_000.0])
def test_a_price_within_the_listing_schema_is_learned(price: float) -> None:
    assert label_problem(price) is None


def test_monitor_shows_the_learner_counters_and_the_unreadable_events() -> None:
    from rich.console import Console

    from streaming_ml.evaluation.monitor import render

    counts = {"skipped_labels": 4, "failed_records": 1, "retention_gaps": 2, "outcomes_lost": 15}
    snapshot = {
        "pairs": {},
        "drift": {},
        "alerts": {"count": 0, "recent": []},
        "learner": {"model_tag": "ford_online:abc", **counts},
        "registry_unreadable_events": 3,
    }
    console = Console(width=200, record=True)
    console.print(render(snapshot))
    text = console.export_text()
    assert "3 unreadable registry events skipped" in text
    row = next(line for line in text.splitlines() if "ford_online:abc" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["ford_online:abc", "4", "1", "2", "15"]
