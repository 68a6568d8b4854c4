"""The XGBoost price model: a booster plus its ``FeatureSpec``, both plain JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xgboost as xgb

from streaming_ml.models import contributions
from streaming_ml.models.features import (
    FEATURE_OF_INPUT,
    INPUT_NAMES,
    INPUT_TYPES,
    FeatureEncoder,
    FeatureSpec,
)
from streaming_ml.schema.listing import FEATURES

if TYPE_CHECKING:
    import bentoml
from streaming_ml.models.protocol import Explained
from streaming_ml.models.store import FEATURES_KEY, check_servable, metadata_of

BOOSTER_FILE = "booster.json"


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
        metadata = metadata_of(model)
        booster = xgb.Booster()
        booster.load_model(model.path_of(BOOSTER_FILE))
        return cls(
            booster=booster,
            spec=FeatureSpec.from_dict(metadata[FEATURES_KEY]),
            tag=str(model.tag),
            target_transform=str(metadata.get(TARGET_TRANSFORM_KEY, "log")),
        )
