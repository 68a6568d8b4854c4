"""The online model kind: a River regressor that predicts, then learns, one listing at a time."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import river
from bentoml.models import ModelContext
from river import compose, forest, linear_model, optim, preprocessing, tree

from streaming_ml.datasets.csv import with_schema_dtypes
from streaming_ml.models import contributions
from streaming_ml.models.booster import TrainParams, fit_booster
from streaming_ml.models.features import ENGINE_SIZE
from streaming_ml.models.protocol import Explained, PriceModelProtocol
from streaming_ml.models.store import metadata_of
from streaming_ml.schema.listing import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, TARGET

KIND_KEY = "kind"


ONLINE_KIND = "online"


MODEL_FILE = "river.pkl"


# Below any real listing: what a model that has learned nothing yet answers (the canary
# needs a finite positive price).
FLOOR_LOG_PRICE = math.log(100.0)


CEILING_LOG_PRICE = math.log(10_000_000.0)  # a diverging learner must not overflow exp()


def _numeric() -> Any:

    # By type, not by name: a missing number is an absent key, which Select would refuse.
    return compose.SelectType(float) | preprocessing.StandardScaler()


def _categories() -> Any:

    return compose.SelectType(str) | preprocessing.OneHotEncoder()


def _arf() -> Any:

    return (_numeric() + _categories()) | forest.ARFRegressor(n_models=10, seed=42)


def _hoeffding() -> Any:

    return (_numeric() + _categories()) | tree.HoeffdingAdaptiveTreeRegressor(seed=42)


def _linear() -> Any:

    # A small step: larger ones diverge on the first rows, before the scaler has settled.
    return (_numeric() + _categories()) | linear_model.LinearRegression(
        optimizer=optim.SGD(0.002), intercept_lr=0.05
    )


def _correction() -> Any:

    # What the residual candidate learns on top of its XGBoost base: a log-price
    # correction per category and per scaled number. A price moving for some models is
    # exactly such a correction, learnt in a few hundred labels.
    return (_numeric() + _categories()) | linear_model.LinearRegression(
        optimizer=optim.SGD(0.01), intercept_lr=0.01
    )


# Compared prequentially on ford_train.csv (docs/model.md, "The online challenger").
CANDIDATES: dict[str, Callable[[], Any]] = {
    "arf": _arf,
    "hoeffding": _hoeffding,
    "linear": _linear,
    "residual": _correction,
}


# Candidates that learn on top of a static XGBoost base (``base``).
NEEDS_BASE = frozenset({"residual"})


DEFAULT_CANDIDATE = "residual"


def features_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The regressor's input: numbers as floats, categories stripped; missing ones left out."""
    x: dict[str, Any] = {}
    for name in NUMERIC_FEATURES:
        value = record.get(name)
        try:
            number = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number) and not (name == ENGINE_SIZE and number == 0):
            x[name] = number
    for name in CATEGORICAL_FEATURES:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            x[name] = value.strip()
    return x


class OnlinePriceModel:
    """A River pipeline behind the price model's interface (``predict_records``,
    ``explain_records``), plus ``learn``. Not thread-safe while learning: the learner owns
    its instance, and a served instance only predicts."""

    kind = ONLINE_KIND

    def __init__(
        self,
        pipeline: Any,
        candidate: str,
        tag: str = "",
        learned: int = 0,
        positions: Mapping[str, int] | None = None,
        reference_listing: Mapping[str, Any] | None = None,
        base: PriceModelProtocol | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.base = base  # a PriceModel the pipeline corrects, or None
        self.candidate = candidate
        self.tag = tag
        self.learned = learned
        self.positions: dict[str, int] = dict(positions or {})
        self.reference_listing = dict(reference_listing or {})

    @classmethod
    def new(
        cls, candidate: str = DEFAULT_CANDIDATE, base: PriceModelProtocol | None = None
    ) -> OnlinePriceModel:
        if candidate not in CANDIDATES:
            raise ValueError(f"unknown online model {candidate!r}; one of {sorted(CANDIDATES)}")
        if (candidate in NEEDS_BASE) != (base is not None):
            raise ValueError(
                f"{candidate}: a base model is {'needed' if base is None else 'unused'}"
            )
        return cls(CANDIDATES[candidate](), candidate, base=base)

    def _base_logs(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.base is None:
            return np.zeros(len(records))
        return np.log(self.base.predict_records(records))

    def _log_price(self, record: Mapping[str, Any], base_log: float) -> float:
        raw = self.pipeline.predict_one(features_of(record))
        value = base_log + (float(raw) if raw is not None else 0.0)
        if not math.isfinite(value) or (raw is None and self.base is None):
            return FLOOR_LOG_PRICE
        return min(max(value, FLOOR_LOG_PRICE), CEILING_LOG_PRICE)

    def predict_log(self, record: Mapping[str, Any]) -> float:
        return self._log_price(record, float(self._base_logs([record])[0]))

    def predict_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        rows = list(records)
        logs = [self._log_price(r, b) for r, b in zip(rows, self._base_logs(rows), strict=True)]
        return np.exp(np.asarray(logs, dtype=np.float64))

    def learn(self, record: Mapping[str, Any], price: float) -> None:
        base_log = float(self._base_logs([record])[0])
        self.pipeline.learn_one(features_of(record), math.log(price) - base_log)
        self.learned += 1

    def explain_records(self, records: Iterable[Mapping[str, Any]]) -> Explained:
        """Exact Shapley values against the reference listing (the training rows' typical
        listing): River's ensembles have no TreeSHAP, and 2^8 predictions per row are
        cheap enough for /explain (not for every streamed row)."""

        rows = list(records)
        prices = np.empty(len(rows))
        base = np.empty(len(rows))
        amounts = np.zeros((len(rows), len(FEATURES)))
        for i, row in enumerate(rows):
            base[i], prices[i], amounts[i] = contributions.against_reference(
                self.predict_records, row, self.reference_listing, FEATURES
            )
        return Explained(prices, base, amounts)

    # -- storage --

    def metadata(self) -> dict[str, Any]:

        return {
            KIND_KEY: ONLINE_KIND,
            "candidate": self.candidate,
            "learned": self.learned,
            "positions": dict(self.positions),
            "reference_listing": self.reference_listing,
            "river": river.__version__,
            # BentoML metadata takes no None: no key means no base.
            **({"base": str(self.base.tag)} if self.base is not None else {}),
        }

    def save(self, name: str, metadata: Mapping[str, Any], source: str) -> str:
        """A new version of ``name`` in the BentoML store; returns its tag."""

        context = ModelContext(
            framework_name="river", framework_versions={"river": river.__version__}
        )
        with (
            bentoml.models.create(
                name,
                labels={"source": source, "framework": "river", KIND_KEY: ONLINE_KIND},
                metadata={**metadata, **self.metadata()},
                context=context,
            ) as bento_model,
            open(bento_model.path_of(MODEL_FILE), "wb") as out,
        ):
            # The base travels with the snapshot: the correction means nothing without it.
            state = {"pipeline": self.pipeline, "base": self.base}
            pickle.dump(state, out, protocol=pickle.HIGHEST_PROTOCOL)
        self.tag = str(bento_model.tag)
        return self.tag

    @classmethod
    def from_bento_model(cls, model: bentoml.Model) -> OnlinePriceModel:

        metadata = metadata_of(model)
        # A pickle runs code when loaded: only models from this store or the registry's
        # topic are loaded (SECURITY.md: who can write to Kafka can change models).
        with open(model.path_of(MODEL_FILE), "rb") as source:
            stored = pickle.load(source)
        return cls(
            stored["pipeline"],
            str(metadata.get("candidate", DEFAULT_CANDIDATE)),
            tag=str(model.tag),
            learned=int(metadata.get("learned", 0)),
            positions={str(k): int(v) for k, v in (metadata.get("positions") or {}).items()},
            reference_listing=metadata.get("reference_listing") or {},
            base=stored["base"],
        )


def is_online(model: bentoml.Model) -> bool:
    return model.info.metadata.get(KIND_KEY) == ONLINE_KIND


def typical_listing(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median of each number and the most common category: the base of explanations."""
    listing: dict[str, Any] = {}
    for name in FEATURES:
        values = [r.get(name) for r in records if r.get(name) is not None]
        if name in CATEGORICAL_FEATURES:
            listing[name] = max(set(values), key=values.count) if values else None
        else:
            listing[name] = float(np.median(np.asarray(values, dtype=float))) if values else None
    return listing


WARM_UP_SHARE = 0.2


def warmed_up(
    candidate: str, rows: Sequence[Mapping[str, Any]], seed: int = 42
) -> OnlinePriceModel:
    """A candidate that has learnt ``rows`` (and whose XGBoost base, if it has one, was
    trained on them): the state a deployed online model starts from."""

    base = None
    if candidate in NEEDS_BASE:
        frame = with_schema_dtypes(pd.DataFrame.from_records(list(rows)))
        base = fit_booster(frame, TrainParams(), seed)
    model = OnlinePriceModel.new(candidate, base)
    for row in rows:
        model.learn(row, float(row[TARGET]))
    return model
