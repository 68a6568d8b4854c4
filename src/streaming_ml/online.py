"""The online model kind: a River regressor that predicts, then learns, one listing at a
time, stored and served like any price model.

The regressor sees the listing's features as a dict: numbers scaled on the fly, categories
one-hot encoded; an unknown engine size (0 or null) or any missing number is left out,
which River's trees treat as missing. It learns the log of the price, as the XGBoost model
does, so errors are relative and the answer is always a positive price.

In the BentoML store an online model is ``river.pkl`` (the whole River pipeline, pickled:
River's own way to persist a model) plus metadata: ``kind: online``, the candidate, how
many labels it has learned and up to which change-topic offsets (``positions``), so a
learner that restarts from it neither skips nor repeats a label.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streaming_ml import contributions
from streaming_ml.data import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, TARGET
from streaming_ml.features import ENGINE_SIZE

if TYPE_CHECKING:
    import bentoml

    from streaming_ml.model import Explained

KIND_KEY = "kind"
ONLINE_KIND = "online"
MODEL_FILE = "river.pkl"
# Below any real listing: what a model that has learned nothing yet answers (the canary
# needs a finite positive price).
FLOOR_LOG_PRICE = math.log(100.0)
CEILING_LOG_PRICE = math.log(10_000_000.0)  # a diverging learner must not overflow exp()


def _numeric() -> Any:
    from river import compose, preprocessing

    # By type, not by name: a missing number is an absent key, which Select would refuse.
    return compose.SelectType(float) | preprocessing.StandardScaler()


def _categories() -> Any:
    from river import compose, preprocessing

    return compose.SelectType(str) | preprocessing.OneHotEncoder()


def _arf() -> Any:
    from river import forest

    return (_numeric() + _categories()) | forest.ARFRegressor(n_models=10, seed=42)


def _hoeffding() -> Any:
    from river import tree

    return (_numeric() + _categories()) | tree.HoeffdingAdaptiveTreeRegressor(seed=42)


def _linear() -> Any:
    from river import linear_model, optim

    # A small step: larger ones diverge on the first rows, before the scaler has settled.
    return (_numeric() + _categories()) | linear_model.LinearRegression(
        optimizer=optim.SGD(0.002), intercept_lr=0.05
    )


def _correction() -> Any:
    from river import linear_model, optim

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
        base: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.base = base  # a PriceModel the pipeline corrects, or None
        self.candidate = candidate
        self.tag = tag
        self.learned = learned
        self.positions: dict[str, int] = dict(positions or {})
        self.reference_listing = dict(reference_listing or {})

    @classmethod
    def new(cls, candidate: str = DEFAULT_CANDIDATE, base: Any = None) -> OnlinePriceModel:
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
        from streaming_ml.model import Explained

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
        import river

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
        import bentoml
        import river
        from bentoml.models import ModelContext

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
        metadata = model.info.metadata
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


# --- prequential evaluation ------------------------------------------------------------


@dataclass
class Prequential:
    """Predict-then-learn on a stream: per-record times and the errors."""

    candidate: str
    rows: int
    predict_s: np.ndarray
    learn_s: np.ndarray
    errors: np.ndarray  # predicted - actual, GBP
    actuals: np.ndarray

    def summary(self) -> dict[str, Any]:
        both = self.predict_s + self.learn_s

        def timing(values: np.ndarray) -> dict[str, float]:
            ms = values * 1000
            return {
                "mean_ms": float(ms.mean()),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
            }

        return {
            "candidate": self.candidate,
            "rows": self.rows,
            "predict": timing(self.predict_s),
            "learn": timing(self.learn_s),
            "predict_learn": timing(both),
            "records_per_s": float(1 / both.mean()),
            "mae": float(np.mean(np.abs(self.errors))),
            "rmse": float(math.sqrt(np.mean(self.errors**2))),
            "mape": float(np.mean(np.abs(self.errors) / self.actuals)),
        }

    def windowed_mae(self, window: int) -> np.ndarray:
        """MAE over the last ``window`` records, at every record."""
        absolute = np.abs(self.errors)
        sums = np.cumsum(np.r_[0.0, absolute])
        ends = np.arange(1, len(absolute) + 1)
        starts = np.maximum(0, ends - window)
        return (sums[ends] - sums[starts]) / (ends - starts)


def prequential(
    model: OnlinePriceModel,
    records: Sequence[Mapping[str, Any]],
    progress: Callable[[int, int], None] | None = None,
) -> Prequential:
    """Each record is priced before its label is learned: the error is what the model
    would have answered live, never having seen that listing's price."""
    n = len(records)
    predict_s, learn_s = np.empty(n), np.empty(n)
    errors, actuals = np.empty(n), np.empty(n)
    for i, record in enumerate(records):
        price = float(record[TARGET])
        started = time.perf_counter()
        predicted = math.exp(model.predict_log(record))
        middle = time.perf_counter()
        model.learn(record, price)
        predict_s[i], learn_s[i] = middle - started, time.perf_counter() - middle
        errors[i], actuals[i] = predicted - price, price
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1, n)
    return Prequential(model.candidate, n, predict_s, learn_s, errors, actuals)


WARM_UP_SHARE = 0.2


def warmed_up(
    candidate: str, rows: Sequence[Mapping[str, Any]], seed: int = 42
) -> OnlinePriceModel:
    """A candidate that has learnt ``rows`` (and whose XGBoost base, if it has one, was
    trained on them): the state a deployed online model starts from."""
    import pandas as pd

    from streaming_ml.data import with_schema_dtypes
    from streaming_ml.train import TrainParams, fit_booster

    base = None
    if candidate in NEEDS_BASE:
        frame = with_schema_dtypes(pd.DataFrame.from_records(list(rows)))
        base = fit_booster(frame, TrainParams(), seed)
    model = OnlinePriceModel.new(candidate, base)
    for row in rows:
        model.learn(row, float(row[TARGET]))
    return model


def compare(
    records: Sequence[Mapping[str, Any]],
    candidates: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """``streaming-ml evaluate --prequential``: each candidate learns the first
    ``WARM_UP_SHARE`` of the stream (the residual one's base is trained on them), then
    predicts-then-learns the rest, in file order; with the machine's load average, since
    the timings depend on it."""
    import os

    split = int(len(records) * WARM_UP_SHARE)
    head, tail = records[:split], records[split:]
    results = []
    for name in candidates:
        step = None if progress is None else (lambda done, total, n=name: progress(n, done, total))
        results.append(prequential(warmed_up(name, head), tail, step).summary())
    return {
        "rows": len(records),
        "warm_up_rows": split,
        "load_average": list(os.getloadavg()),
        "candidates": results,
    }


# --- the price-shift study: does the online model adapt where the static one cannot? ---

SHIFT_WINDOW = 1_000
RECOVERY_TOLERANCE = 0.10


@dataclass
class ShiftStudy:
    lead_in: int
    window: int
    static_mae: np.ndarray  # windowed MAE at each record
    online_mae: np.ndarray

    def recovery(self, mae: np.ndarray) -> int | None:
        """Labels after the shift until the windowed MAE, having risen above 110 % of its
        level just before the shift, is back under it and stays there for a whole window
        (0 if it never rose above; None if it never comes back for that long)."""
        level = mae[self.lead_in - 1] * (1 + RECOVERY_TOLERANCE)
        after = mae[self.lead_in :]
        above = np.flatnonzero(after > level)
        if not above.size:
            return 0
        within = after <= level
        # run[i]: how many listings in a row from i on stay within (counted backwards).
        run = np.zeros(len(within) + 1, dtype=int)
        for i in range(len(within) - 1, -1, -1):
            run[i] = run[i + 1] + 1 if within[i] else 0
        sustained = np.flatnonzero(run[above[0] : len(within)] >= self.window)
        return int(above[0] + sustained[0]) if sustained.size else None

    def share_within(self, mae: np.ndarray) -> float:
        """Share of the listings after the recovery whose windowed MAE is within 10 %."""
        recovered = self.recovery(mae)
        if recovered is None:
            return 0.0
        level = mae[self.lead_in - 1] * (1 + RECOVERY_TOLERANCE)
        rest = mae[self.lead_in + recovered :]
        return float(np.mean(rest <= level)) if rest.size else 1.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lead_in": self.lead_in, "window": self.window}
        for name, mae in (("static", self.static_mae), ("online", self.online_mae)):
            out[name] = {
                "mae_before_shift": float(mae[self.lead_in - 1]),
                "mae_peak_after": float(mae[self.lead_in :].max()),
                "mae_at_end": float(mae[-1]),
                "labels_to_recover": self.recovery(mae),
                "share_within_10pct_after": self.share_within(mae),
            }
        return out

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        # From the first full window: before it, a few listings make a noisy average.
        start = min(self.window, self.lead_in) - 1
        x = np.arange(start + 1, len(self.static_mae) + 1)
        static, online_mae = self.static_mae[start:], self.online_mae[start:]
        ax.plot(x, static, label="static XGBoost (trained before the shift)")
        ax.plot(x, online_mae, label="online model (predicts, then learns each label)")
        ax.axvline(self.lead_in, color="grey", linestyle="--", label="prices shift")
        level = self.online_mae[self.lead_in - 1] * (1 + RECOVERY_TOLERANCE)
        ax.axhline(level, color="grey", linestyle=":", label="online: pre-shift MAE + 10 %")
        ax.set_xlabel("listings (each labelled after it is priced)")
        ax.set_ylabel(f"MAE over the last {self.window} listings (£)")
        ax.set_title("price-shift: Kuga and EcoSport prices +20 %")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def price_shift_study(
    candidate: str = DEFAULT_CANDIDATE,
    train_rows: int = 5_000,
    lead_in: int = 3_000,
    shifted: int = 12_000,
    seed: int = 42,
    progress: Callable[[int, int], None] | None = None,
) -> ShiftStudy:
    """Both models learn the same seeded synthetic rows; then a stream of ``lead_in``
    normal listings and ``shifted`` price-shift ones (``load.PRICE_SHIFT``) is priced by
    both, and the online one learns each label after pricing it."""
    from streaming_ml.data import generate_listing_records, generate_listings
    from streaming_ml.load import PRICE_SHIFT
    from streaming_ml.train import TrainParams, fit_booster

    static = fit_booster(generate_listings(train_rows, seed=seed), TrainParams(), seed)
    learner = warmed_up(candidate, generate_listing_records(train_rows, seed=seed), seed)
    stream = generate_listing_records(lead_in, seed + 1) + generate_listing_records(
        shifted, seed + 2, shift=PRICE_SHIFT
    )
    actual = np.array([float(r[TARGET]) for r in stream])
    static_errors = static.predict_records(stream) - actual
    online_run = prequential(learner, stream, progress)
    window = SHIFT_WINDOW

    def windowed(errors: np.ndarray) -> np.ndarray:
        run = Prequential("", len(errors), errors * 0, errors * 0, errors, actual)
        return run.windowed_mae(window)

    return ShiftStudy(lead_in, window, windowed(static_errors), windowed(online_run.errors))
