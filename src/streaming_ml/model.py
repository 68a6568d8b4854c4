"""The served price model: an XGBoost booster plus its ``FeatureSpec``, both plain JSON.

A model in the BentoML store holds ``booster.json`` (XGBoost's own JSON format) and
the feature spec in its metadata; nothing custom is pickled, so loading needs only
this module and XGBoost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xgboost as xgb

from streaming_ml import contributions
from streaming_ml.data import FEATURES
from streaming_ml.exceptions import ModelNotFoundError
from streaming_ml.features import (
    FEATURE_OF_INPUT,
    INPUT_NAMES,
    INPUT_TYPES,
    FeatureEncoder,
    FeatureSpec,
)

if TYPE_CHECKING:
    import bentoml

logger = logging.getLogger(__name__)

BOOSTER_FILE = "booster.json"
FEATURES_KEY = "features"
TARGET_TRANSFORM_KEY = "target_transform"


def dmatrix(
    matrix: np.ndarray, label: np.ndarray | None = None, nthread: int | None = None
) -> xgb.DMatrix:
    """An input matrix as XGBoost's DMatrix, with the input names and categorical types."""
    return xgb.DMatrix(
        matrix,
        label=label,
        feature_names=list(INPUT_NAMES),
        feature_types=list(INPUT_TYPES),
        enable_categorical=True,
        nthread=nthread,
    )


@dataclass(frozen=True)
class Explained:
    """Prices with their decomposition: ``base[i] + amounts[i].sum() == prices[i]`` (GBP).

    ``amounts`` has one column per listing feature (``data.FEATURES`` order)."""

    prices: np.ndarray
    base: np.ndarray
    amounts: np.ndarray

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the service's ``explanation`` object."""
        return {
            "base_price": float(self.base[i]),
            "contributions": dict(zip(FEATURES, self.amounts[i].tolist(), strict=True)),
        }


class PriceModel:
    """Predicts GBP prices from listing features; single-threaded, safe to share per worker."""

    def __init__(
        self, booster: xgb.Booster, spec: FeatureSpec, tag: str, target_transform: str = "log"
    ) -> None:
        # One thread per call: the service runs several workers and batches requests,
        # so intra-call threading only adds contention and latency jitter.
        booster.set_param({"nthread": 1})
        self.booster = booster
        self.spec = spec
        self.tag = tag
        self.target_transform = target_transform
        self._encoder = FeatureEncoder(spec)

    def _to_price(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64).reshape(-1)
        return np.exp(raw) if self.target_transform == "log" else raw

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        if len(matrix) == 0:
            return np.empty(0, dtype=np.float64)
        return self._to_price(self.booster.inplace_predict(matrix, validate_features=False))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Prices for each row of ``frame`` (``data.FEATURES`` columns; others ignored)."""
        return self.predict_matrix(self._encoder.from_frame(frame))

    def predict_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Prices for dicts keyed by feature name: the fast path for JSON request bodies."""
        return self.predict_matrix(self._encoder.from_records(records))

    def explain_records(self, records: Iterable[Mapping[str, Any]]) -> Explained:
        """Prices (the very numbers ``predict_records`` gives) with each listing feature's
        share in pounds, from XGBoost's TreeSHAP contributions (``pred_contribs``).

        TreeSHAP needs a DMatrix and costs a few hundred times a prediction per row, so
        it runs only when asked (docs/model.md, "Explaining a price")."""
        matrix = self._encoder.from_records(records)
        if len(matrix) == 0:
            empty = np.empty(0, dtype=np.float64)
            return Explained(empty, empty, np.empty((0, len(FEATURES))))
        prices = self.predict_matrix(matrix)
        raw = self.booster.predict(
            dmatrix(matrix, nthread=1), pred_contribs=True, validate_features=False
        )
        # The last column is the bias: the model's expected output, the same for every row.
        shares = contributions.by_feature(raw[:, :-1], INPUT_NAMES, FEATURE_OF_INPUT, FEATURES)
        convert = (
            contributions.to_pounds if self.target_transform == "log" else contributions.in_pounds
        )
        base, amounts = convert(shares, raw[:, -1], prices)
        return Explained(prices, base, amounts)

    @classmethod
    def from_bento_model(cls, model: bentoml.Model) -> PriceModel:
        check_servable(model)
        metadata = model.info.metadata
        booster = xgb.Booster()
        booster.load_model(model.path_of(BOOSTER_FILE))
        return cls(
            booster=booster,
            spec=FeatureSpec.from_dict(metadata[FEATURES_KEY]),
            tag=str(model.tag),
            target_transform=str(metadata.get(TARGET_TRANSFORM_KEY, "log")),
        )


def check_servable(model: bentoml.Model) -> None:
    """ModelNotFoundError unless ``model`` is a price model with this code's inputs; reads
    the metadata only (cheap enough for a start-up check)."""
    metadata = model.info.metadata
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


def from_bento_model(bento_model: bentoml.Model) -> Any:
    """The stored model behind the price model's interface: an XGBoost ``PriceModel``, or
    an ``online.OnlinePriceModel`` for a model of kind ``online``."""
    from streaming_ml import online

    check_servable(bento_model)
    if online.is_online(bento_model):
        return online.OnlinePriceModel.from_bento_model(bento_model)
    return PriceModel.from_bento_model(bento_model)


def load_price_model(tag: str) -> Any:
    model = from_bento_model(get_bento_model(tag))
    logger.info("loaded price model", extra={"model_tag": model.tag})
    return model
