"""The online challenger on the real stack: served as the shadow arm, it learns from every
served outcome, snapshots into the registry (the services swap to each snapshot), a
SIGKILL of the learner neither loses nor repeats a label, and a snapshot can be promoted
to champion like any model."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import bentoml
import pytest
import requests

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.models import lifecycle, registry
from streaming_ml.models.train import train_online_model
from tests.integration.following import experiment_running
from tests.integration.pipeline import (
    dsn_of,
    query,
    running_bridge,
    settings_env,
    settled,
    unique,
    wait_until,
    where_stuck,
)
from tests.integration.test_evaluation import (
    evaluation_settings,
    evaluator_starts_at_end,
    read_outcomes,
    running_evaluator,
)

pytestmark = pytest.mark.integration

WARM_UP_ROWS = 1_000
SNAPSHOT_LABELS = 150


def start_learner(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streaming_ml.cli", "learn"],
            cwd=REPO_ROOT, env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def learned_by(tag: str) -> int:
    return int(bentoml.models.get(tag).info.metadata["learned"])


def test_the_online_shadow_learns_each_served_outcome_once_across_a_sigkill(
    stack_settings: Settings, trained_model_tag: str, tmp_path: Path
) -> None:
    name = unique("ford_online").replace("-", "_")
    first = train_online_model(name, None, WARM_UP_ROWS, 11, "residual")["tag"]
    assert learned_by(first) == WARM_UP_ROWS
    experiment = {"shadow": first}
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as served:
        settings = evaluation_settings(
            served, str(served.service_url),
            online_model_name=name, online_snapshot_labels=SNAPSHOT_LABELS,
            learner_group=unique("test-learner"),
        )  # fmt: skip
        dsn = dsn_of(settings)
        evaluator_starts_at_end(settings)
        log = tmp_path / "learner.log"
        loaded: list[Any] = []
        with running_bridge(settings), running_evaluator(settings):
            learner = start_learner(settings, log)
            try:
                loader = threading.Thread(
                    target=lambda: loaded.append(
                        load_listings(dsn, 1_200, seed=1101, rate=300, batch=20,
                                      table=settings.listings_table)
                    )
                )  # fmt: skip
                loader.start()
                wait_until(
                    lambda: log.read_text().count("online model snapshot") >= 2, 120,
                    "two snapshots", explain=lambda: log.read_text()[-3000:],
                )  # fmt: skip
                learner.send_signal(signal.SIGKILL)
                learner.wait(timeout=30)
                learner = start_learner(settings, log)
                loader.join(timeout=120)
                ids = loaded[0].ids
                wait_until(
                    lambda: settled(dsn, settings, ids), 120, "every listing priced",
                    explain=lambda: where_stuck(settings, dsn, ids),
                )  # fmt: skip
                outcomes = wait_until(
                    lambda: (found := read_outcomes(settings)) and len(found) >= 2 * len(ids)
                    and found,
                    120, "a served and a shadow outcome per listing",
                )  # fmt: skip
                wait_until(
                    lambda: log.read_text().count("learner started") == 2
                    and learner_lag(settings) == 0,
                    120, "the restarted learner caught up", explain=lambda: log.read_text()[-3000:],
                )  # fmt: skip
            finally:
                learner.send_signal(signal.SIGTERM)  # a graceful stop snapshots what is left
                assert learner.wait(timeout=120) == 0, log.read_text()[-3000:]
        served_outcomes = [o for o in outcomes if o["arm"] in ("champion", "challenger")]
        assert len(served_outcomes) == len(ids)
        newest = registry.read_aliases(settings).experiment.shadow
        # Every served outcome learned exactly once on top of the warm-up, kill or not.
        assert learned_by(newest) == WARM_UP_ROWS + len(ids)
        assert newest != first and newest.split(":")[0] == name
        wait_until(
            lambda: model_info_shadow(served) == newest, 30, "the service on the newest snapshot"
        )
        shadow_rows = query(
            dsn, f"SELECT count(*) AS n FROM {settings.shadow_table} WHERE listing_id = ANY(%s)",
            (ids,),
        )  # fmt: skip
        assert shadow_rows[0]["n"] == len(ids)
        # Promoted like any model: the service serves the online snapshot as champion.
        lifecycle.promote(settings, newest, force=True)
        wait_until(lambda: model_info_champion(served) == newest, 30, "the online champion")
        answer = requests.post(
            f"{served.service_url}/predict_batch",
            json={"records": generate_listing_records(5, seed=1102)},
            timeout=10,
        ).json()
        assert {item["model_tag"] for item in answer} == {newest}
        assert all(item["predicted_price"] > 0 for item in answer)
    text = log.read_text()
    assert text.count("learner started") == 2


def learner_lag(settings: Settings) -> int | None:
    from streaming_ml.bench.kafka import LagProbe

    probe = LagProbe(settings, settings.learner_group, settings.outcomes_topic)
    try:
        return probe.lag()
    finally:
        probe.close()


def model_info_shadow(settings: Settings) -> str | None:
    info = requests.post(f"{settings.service_url}/model_info", json={}, timeout=10).json()
    return (info.get("arms", {}).get("shadow") or {}).get("tag")


def model_info_champion(settings: Settings) -> str | None:
    info = requests.post(f"{settings.service_url}/model_info", json={}, timeout=10).json()
    return info.get("tag")


def test_the_learner_never_loads_a_published_version_not_signed_with_the_registry_key(
    stack_settings: Settings, trained_model_tag: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from streaming_ml.models.learner import newest_online
    from tests.fixtures.model import crafted_online_export
    from tests.integration.following import own_registry

    name = unique("ford_online").replace("-", "_")
    settings = own_registry(stack_settings).model_copy(update={"online_model_name": name})
    genuine = train_online_model(name, None, 300, 12, "linear")["tag"]
    registry.publish(settings, genuine)
    marker = tmp_path / "payload-ran"
    # Another version of the learner's model, written to the topics without the key.
    crafted, data = crafted_online_export(trained_model_tag, name, marker)
    registry.RegistryWriter(settings).write(settings.models_topic, crafted.encode(), data)
    summary = registry.ModelSummary(tag=crafted)
    registry.append_event(settings, registry.ModelEvent(kind="published", summary=summary))

    assert newest_online(settings).tag == genuine
    assert not marker.exists(), "a crafted pickle ran in the learner"
    refused = [r for r in caplog.records if r.getMessage() == "model refused"]
    assert [getattr(r, "tag", None) for r in refused] == [crafted]
    assert "is not signed" in getattr(refused[0], "reason", "")
    assert crafted not in {str(m.tag) for m in bentoml.models.list()}


def test_a_restarted_learner_skips_snapshots_a_kill_cut_short(
    stack_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """BentoML copies a snapshot into the store file by file: a kill during the copy leaves
    a truncated pickle, or a version with no description at all (which breaks every
    listing of the store). The learner resumes from the last whole snapshot."""
    from streaming_ml.models.learner import newest_online
    from streaming_ml.models.online import MODEL_FILE
    from tests.integration.following import own_registry

    name = unique("ford_online").replace("-", "_")
    settings = own_registry(stack_settings).model_copy(update={"online_model_name": name})
    whole = train_online_model(name, None, 300, 13, "linear")["tag"]
    cut_short = train_online_model(name, None, 500, 14, "linear")["tag"]
    assert learned_by(cut_short) > learned_by(whole)
    pickled = Path(bentoml.models.get(cut_short).path_of(MODEL_FILE))
    pickled.write_bytes(pickled.read_bytes()[: pickled.stat().st_size // 2])
    no_description = pickled.parent.parent / "halfcopied"
    no_description.mkdir()
    (no_description / MODEL_FILE).write_bytes(b"\x80\x05")

    model = newest_online(settings)

    assert model.tag == whole
    assert model.learned == learned_by(whole)
    assert {str(m.tag) for m in bentoml.models.list(name)} == {whole}
    removed = {
        getattr(r, "tag", None)
        for r in caplog.records
        if r.getMessage().startswith("damaged") and "removed from the store" in r.getMessage()
    }
    assert removed == {cut_short, f"{name}:halfcopied"}
