"""The BentoML model store: finding a stored model and checking that this code can serve it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streaming_ml.errors import ModelNotFoundError
from streaming_ml.models.features import (
    INPUT_NAMES,
)

if TYPE_CHECKING:
    import bentoml


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
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.models.get(tag)
    except (BentoMLException, ValueError) as error:
        raise ModelNotFoundError(
            f"no model {tag!r} in the BentoML model store ({error}); "
            "run `streaming-ml train` first (or pass an existing tag, see `bentoml models list`)."
        ) from error


def metadata_of(model: bentoml.Model) -> Mapping[str, Any]:
    """A stored model's metadata as the JSON ``train`` and ``online`` saved: BentoML types
    each value as any of its metadata types, so a nested read would not type-check."""
    return model.info.metadata
