"""Services that follow a registry of their own on the shared stack, as `streaming-ml
serve` runs them: the lifecycle and explanation tests set up their arms with these."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from streaming_ml.config import Settings
from streaming_ml.models import lifecycle
from streaming_ml.service.launcher import ServiceProcess
from tests.fixtures.ports import free_port
from tests.integration.pipeline import pipeline_settings, unique, wait_until


def own_registry(stack_settings: Settings) -> Settings:
    return stack_settings.model_copy(
        update={
            "model_events_topic": unique("sml_model_events"),
            "models_topic": unique("sml_models"),
        }
    )


@contextmanager
def following_service(
    settings: Settings, fallback_tag: str, log: Path, bentoml_home: Path | None = None
) -> Iterator[ServiceProcess]:
    """A service that follows ``settings``' registry (its fallback and first champion:
    ``fallback_tag``), as `streaming-ml serve` runs it."""
    service = ServiceProcess(
        host=settings.host, port=free_port(), model_tag=fallback_tag,
        bentoml_home=bentoml_home, log_path=log, settings=settings,
    )  # fmt: skip
    with service:
        yield service


def model_info(service: ServiceProcess) -> dict[str, Any]:
    return requests.post(f"{service.url}/model_info", json={}, timeout=10).json()


def champion_is(service: ServiceProcess, tag: str) -> bool:
    return model_info(service)["tag"] == tag


@contextmanager
def experiment_running(
    stack_settings: Settings, champion: str, experiment: dict[str, Any], tmp_path: Path
) -> Iterator[Settings]:
    """A following service with ``champion`` claimed and ``experiment`` (challenger and
    split_percent, and/or shadow) served; yields pipeline settings that call it."""
    registry_settings = own_registry(stack_settings)
    with following_service(registry_settings, champion, tmp_path / "service.log") as service:
        wait_until(lambda: champion_is(service, champion), 30, "the champion claimed")
        lifecycle.start_experiment(
            registry_settings,
            experiment.get("challenger"),
            experiment.get("split_percent", 0.0),
            experiment.get("shadow"),
        )
        arms = {arm for arm in ("challenger", "shadow") if experiment.get(arm)}
        wait_until(lambda: arms <= set(model_info(service)["arms"]), 10, f"{arms} served")
        yield pipeline_settings(registry_settings, service.url)
