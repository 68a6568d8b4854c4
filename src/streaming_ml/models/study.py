"""Prequential studies of the online candidates: test-then-train over a stream, a price shift."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from streaming_ml.datasets.load import PRICE_SHIFT
from streaming_ml.datasets.synthetic import generate_listing_records, generate_listings
from streaming_ml.models.booster import TrainParams, fit_booster
from streaming_ml.models.online import DEFAULT_CANDIDATE, WARM_UP_SHARE, OnlinePriceModel, warmed_up
from streaming_ml.schema.listing import TARGET


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


def compare(
    records: Sequence[Mapping[str, Any]],
    candidates: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """``streaming-ml evaluate --prequential``: each candidate learns the first
    ``WARM_UP_SHARE`` of the stream (the residual one's base is trained on them), then
    predicts-then-learns the rest, in file order; with the machine's load average, since
    the timings depend on it."""

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

        matplotlib.use("Agg")

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
