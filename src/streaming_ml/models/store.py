"""The BentoML model store: finding a stored model, checking that this code can serve it,
and describing it without leaking where its files lived."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.exceptions import BentoMLException

from streaming_ml.errors import ModelNotFoundError
from streaming_ml.models.features import INPUT_NAMES
from streaming_ml.schema.listing import FEATURES

logger = logging.getLogger(__name__)

FEATURES_KEY = "features"


def check_servable(model: bentoml.Model) -> None:
    """ModelNotFoundError unless ``model`` is a price model with this code's inputs; reads
    the metadata only (cheap enough for a start-up check)."""
    metadata = metadata_of(model)
    if FEATURES_KEY not in metadata:
        raise ModelNotFoundError(
            f"{model.tag} is not a price model saved by `streaming-ml train` "
            "(no feature spec in its metadata); train one with `streaming-ml train`."
        )
    inputs = metadata[FEATURES_KEY].get("inputs")
    if inputs != list(INPUT_NAMES):
        raise ModelNotFoundError(
            f"{model.tag} was trained on inputs {inputs}, this code builds "
            f"{list(INPUT_NAMES)}; retrain with `streaming-ml train`."
        )


def get_bento_model(tag: str) -> bentoml.Model:
    """The stored model for ``tag`` (e.g. ``ford_price:latest``) or a ModelNotFoundError."""

    try:
        return bentoml.models.get(tag)
    except (BentoMLException, ValueError) as error:
        raise ModelNotFoundError(
            f"no model {tag!r} in the BentoML model store ({error}); "
            "run `streaming-ml train` first (or pass an existing tag, see `bentoml models list`)."
        ) from error


def remove_damaged_versions(name: str) -> list[str]:
    """Remove the versions of ``name`` whose description a crash cut short; return their
    tags. BentoML copies a new version into the store file by file, so a process killed
    during the copy leaves a version without a readable ``model.yaml``, and from then on
    every listing of the store fails. Only for a name one process writes (the learner's):
    another writer's copy in progress would look the same."""
    removed = []
    for version in sorted(Path(BentoMLContainer.model_store_dir.get(), name).glob("*")):
        if not version.is_dir():
            continue  # the "latest" pointer
        tag = f"{name}:{version.name}"
        try:
            bentoml.models.get(tag)
        except Exception as error:  # BentoML and cattrs raise many kinds
            logger.error(
                "damaged model version removed from the store",
                extra={"tag": tag, "reason": f"{type(error).__name__}: {error}"},
            )
            shutil.rmtree(version)
            removed.append(tag)
    return removed


def model_card(bento_model: bentoml.Model) -> dict[str, Any]:
    """What ``/model_info`` reports about a stored model."""
    info = bento_model.info
    return {
        "tag": str(bento_model.tag),
        "name": bento_model.tag.name,
        "version": bento_model.tag.version,
        "created_at": info.creation_time.isoformat(),
        "module": info.module,
        "labels": dict(info.labels),
        "metadata": without_paths(dict(info.metadata)),
        "features": list(FEATURES),
    }


def without_paths(value: Any) -> Any:
    """``value`` with every ``path`` entry replaced by the file's name alone: where the
    training data lived on the trainer's disk is nobody's business on the network."""
    if isinstance(value, Mapping):
        cleaned = {}
        for key, item in value.items():
            if key == "path" and isinstance(item, str):
                cleaned["file"] = Path(item).name
            else:
                cleaned[key] = without_paths(item)
        return cleaned
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    return value


def metadata_of(model: bentoml.Model) -> Mapping[str, Any]:
    """A stored model's metadata as the JSON ``train`` and ``online`` saved: BentoML types
    each value as any of its metadata types, so a nested read would not type-check."""
    return model.info.metadata


def export_bytes(tag: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sml-export-") as tmp:
        path = Path(tmp) / "model.bentomodel"
        bentoml.models.export_model(tag, str(path))
        return path.read_bytes()


def import_bytes(data: bytes) -> str:
    """Import an exported model into the local store; return its tag."""
    with tempfile.TemporaryDirectory(prefix="sml-import-") as tmp:
        path = Path(tmp) / "model.bentomodel"
        path.write_bytes(data)
        return str(bentoml.models.import_model(str(path)).tag)
