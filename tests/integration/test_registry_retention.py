"""The registry on the real stack after many learner snapshots: only the newest versions
of a model and the ones an alias names keep their exports, and a replica with an empty
store imports its champion by reading one record, not the whole models topic."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest

from streaming_ml.config import Settings
from streaming_ml.errors import ModelNotFoundError
from streaming_ml.models import registry
from tests.integration.following import own_registry
from tests.integration.pipeline import unique

pytestmark = pytest.mark.integration

SNAPSHOTS = 2_000
KEEP = 5


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
    stored = bentoml.models.list(name)
    if stored:
        shutil.rmtree(Path(stored[0].path).parent)


def test_a_replica_imports_the_champion_fast_and_only_aliased_old_versions_survive(
    stack_settings: Settings, model_name: str
) -> None:
    settings = own_registry(stack_settings).model_copy(update={"model_keep_versions": KEEP})
    aliases = registry.Aliases()
    writer = registry.RegistryWriter(settings)
    tags: list[str] = []
    started = time.monotonic()
    for number in range(SNAPSHOTS):
        tag = tiny_model(model_name, number)
        tags.append(tag)
        writer.publish(tag, aliases)
        if number in (10, 1_200):  # the first becomes "previous", the second champion
            writer.append(registry.ModelEvent(kind="promoted", tag=tag), aliases)
        if number == 600:
            event = registry.ModelEvent(kind="experiment_started", shadow=tag)
            writer.append(event, aliases)
        writer.retire_old(aliases, model_name)
    writer.close()
    publishing_s = time.monotonic() - started
    champion, previous, shadow = tags[1_200], tags[10], tags[600]
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
    assert {t for t, v in last.items() if v is None} == set(tags) - kept
    assert {t for t, v in last.items() if v is not None} == kept

    # A replica whose store lacks the champion: one record read, not 2,000.
    bentoml.models.delete(champion)
    started = time.monotonic()
    assert registry.fetch(settings, champion) == champion
    import_s = time.monotonic() - started
    assert import_s < 5, f"imported the champion in {import_s:.1f}s"
    assert Path(bentoml.models.get(champion).path_of("weights.txt")).read_text() == "1200\n"
    with pytest.raises(ModelNotFoundError, match="retired"):
        registry.fetch(settings, tags[0])
    print(f"published {SNAPSHOTS} in {publishing_s:.1f}s; champion imported in {import_s:.2f}s")
