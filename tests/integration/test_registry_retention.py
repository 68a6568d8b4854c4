"""The registry on the real stack after many learner snapshots: only the newest versions
of a model and the ones an alias names keep their exports, and a replica whose store
lacks the champion imports it by reading one record, not the whole models topic."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer

from streaming_ml.config import Settings
from streaming_ml.errors import ModelNotFoundError
from streaming_ml.models import registry
from tests.integration.following import own_registry
from tests.integration.pipeline import unique

pytestmark = pytest.mark.integration

SNAPSHOTS = 2_000
KEEP = 5
# Versions published per call: one wait on Kafka for their exports and one for their
# events, as a registry writer publishing many versions does.
BATCH = 250
PREVIOUS, SHADOW, CHAMPION = 10, 600, 1_200


def tiny_model(name: str, number: int) -> str:
    """A stored model of a few bytes: what is measured is the registry, not the model."""
    with bentoml.models.create(name, metadata={"snapshot": number}) as model:
        Path(model.path_of("weights.txt")).write_text(f"{number}\n")
    return str(model.tag)


@pytest.fixture
def model_name() -> Iterator[str]:
    name = unique("retention").replace("-", "_")
    yield name
    # One directory per model name in the store: 2,000 deletes one by one take minutes.
    shutil.rmtree(Path(BentoMLContainer.model_store_dir.get(), name), ignore_errors=True)


def aliases_named_in(
    writer: registry.RegistryWriter, aliases: registry.Aliases, tags: list[str], numbers: range
) -> None:
    """Point the aliases at the versions ``numbers`` holds, in the order a team would:
    the first champion (later the previous one), a shadow, then the champion."""
    for number in (PREVIOUS, SHADOW, CHAMPION):
        if number not in numbers:
            continue
        if number == SHADOW:
            event = registry.ModelEvent(kind="experiment_started", shadow=tags[number])
        else:
            event = registry.ModelEvent(kind="promoted", tag=tags[number])
        writer.append(event, aliases=aliases)


def test_a_replica_imports_the_champion_fast_and_only_aliased_old_versions_survive(
    stack_settings: Settings, model_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = own_registry(stack_settings).model_copy(update={"model_keep_versions": KEEP})
    aliases = registry.Aliases()
    writer = registry.RegistryWriter(settings)
    tags: list[str] = []
    started = time.monotonic()
    storing_s = 0.0
    try:
        for first in range(0, SNAPSHOTS, BATCH):
            numbers = range(first, first + BATCH)
            stored = time.monotonic()
            tags += [tiny_model(model_name, number) for number in numbers]
            storing_s += time.monotonic() - stored
            writer.publish(tags[first:], aliases)
            aliases_named_in(writer, aliases, tags, numbers)
            writer.retire_old(aliases, model_name)
    finally:
        writer.close()
    publishing_s = time.monotonic() - started
    champion, previous, shadow = tags[CHAMPION], tags[PREVIOUS], tags[SHADOW]
    kept = {*tags[-KEEP:], champion, previous, shadow}

    # What every other reader sees: the log, folded from scratch.
    state = registry.read_aliases(settings, timeout_s=60)
    assert state.unreadable == 0
    assert (state.champion, state.previous_champion) == (champion, previous)
    assert set(state.published) == kept
    assert state.retired == set(tags) - kept
    # The models topic: the last record of each retired tag is its tombstone.
    last: dict[str, bytes | None] = {}

    def keep(key: bytes | None, value: bytes | None) -> None:
        assert key is not None
        last[key.decode()] = value

    registry.read_to_end(settings, settings.models_topic, keep, timeout_s=60)
    assert len(last) == SNAPSHOTS
    assert {t for t, v in last.items() if v is None} == set(tags) - kept
    assert {t for t, v in last.items() if v is not None} == kept

    # A replica whose store lacks the champion: one record read, not the whole topic.
    bentoml.models.delete(champion)
    caplog.set_level(logging.INFO, logger=registry.__name__)
    started = time.monotonic()
    assert registry.fetch(settings, champion) == champion
    import_s = time.monotonic() - started
    imports = [r for r in caplog.records if r.getMessage() == "model imported from Kafka"]
    assert [(r.tag, r.records_read) for r in imports] == [(champion, 1)]
    assert import_s < 5, f"imported the champion in {import_s:.1f}s"
    assert Path(bentoml.models.get(champion).path_of("weights.txt")).read_text() == "1200\n"
    # A retired version this store lacks is not looked for: it is gone.
    bentoml.models.delete(tags[0])
    with pytest.raises(ModelNotFoundError, match="retired"):
        registry.fetch(settings, tags[0])
    print(
        f"{SNAPSHOTS} versions stored and published in {publishing_s:.1f}s (storing them "
        f"{storing_s:.1f}s); the champion imported in {import_s:.2f}s"
    )
