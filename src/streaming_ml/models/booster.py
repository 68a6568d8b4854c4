"""The XGBoost price model: a booster plus its ``FeatureSpec``, both plain JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xgboost as xgb

from streaming_ml.errors import ConfigError
from streaming_ml.models import contributions
from streaming_ml.models.features import (
    FEATURE_OF_INPUT,
    INPUT_NAMES,
    INPUT_TYPES,
    FeatureEncoder,
    FeatureSpec,
    fit_feature_spec,
)
from streaming_ml.models.protocol import Explained
from streaming_ml.models.store import FEATURES_KEY, check_servable, metadata_of
from streaming_ml.schema.listing import FEATURES, TARGET

if TYPE_CHECKING:
    import bentoml

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


@dataclass(frozen=True)
class TrainParams:
    """XGBoost settings; defaults chosen by 5-fold CV on the real training split
    (see docs/model.md and scripts/tune_model.py)."""

    max_depth: int = 8
    learning_rate: float = 0.04
    n_estimators: int = 300
    min_child_weight: float = 3.0
    subsample: float = 0.8
    colsample_bytree: float = 0.9
    reg_lambda: float = 3.0
    max_cat_to_onehot: int = 1
    max_bin: int = 512
    # Inputs whose effect may only lower the price: more miles never make a car dearer.
    # Beyond being true, it keeps the trees from fitting noise in sparse mileage ranges.
    monotone_decreasing: tuple[str, ...] = ("mileage",)
    # One thread: training shares 2 cores with Kafka, Postgres and the JVMs, and
    # OpenMP's spin-waiting makes 2 threads up to 10x slower than 1 when a core is busy.
    nthread: int = 1

    def booster_params(self, seed: int) -> dict[str, Any]:
        params = asdict(self)
        params.pop("n_estimators")
        params["eta"] = params.pop("learning_rate")
        params["lambda"] = params.pop("reg_lambda")
        decreasing = params.pop("monotone_decreasing")
        unknown = set(decreasing) - set(INPUT_NAMES)
        if unknown:
            raise ConfigError(
                f"monotone_decreasing names {sorted(unknown)}, which are not model inputs; "
                f"use some of {', '.join(INPUT_NAMES)}."
            )
        constraints = ",".join("-1" if name in decreasing else "0" for name in INPUT_NAMES)
        return {
            **params,
            "monotone_constraints": f"({constraints})",
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "seed": seed,
            "verbosity": 0,
        }


def fit_booster(
    frame: pd.DataFrame,
    params: TrainParams,
    seed: int,
    valid: pd.DataFrame | None = None,
    early_stopping_rounds: int | None = None,
) -> PriceModel:
    """Fit on ``frame`` (log-price target) and wrap it as an untagged PriceModel."""
    spec = fit_feature_spec(frame)
    encoder = FeatureEncoder(spec)
    train_matrix = dmatrix(encoder.from_frame(frame), np.log(frame[TARGET].to_numpy(float)))
    evals = []
    if valid is not None:
        valid_label = np.log(valid[TARGET].to_numpy(float))
        evals = [(dmatrix(encoder.from_frame(valid), valid_label), "valid")]
    booster = xgb.train(
        params.booster_params(seed),
        train_matrix,
        num_boost_round=params.n_estimators,
        evals=evals,
        early_stopping_rounds=early_stopping_rounds if evals else None,
        verbose_eval=False,
    )
    if early_stopping_rounds and evals:
        # Keep only the trees up to the best round so predictions use the stopped model.
        booster = booster[: booster.best_iteration + 1]
    return PriceModel(booster, spec, tag="(unsaved)")
