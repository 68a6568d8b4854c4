"""Drift: live feature and prediction distributions against the training data's.

At training time ``reference_of`` stores, with the model, each feature's distribution:
decile bins for numbers (plus a bin for missing values), shares for categories (a value
the training data never had falls in an "unseen" bin of reference share 0). On the
stream, ``DriftWindow`` counts rows into the same bins over tumbling windows and scores
each window:

* PSI (population stability index), for every feature: sum over bins of
  (p - q) * ln(p / q), shares smoothed by ``EPSILON`` so an empty bin is finite.
  Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant.
* KS statistic for numbers, from the binned CDFs (the largest CDF gap at a bin edge),
  and a chi-squared test's p-value for categories (scipy).

A feature alerts when its PSI is above the threshold in ``alert_windows`` windows in a
row: one window can be noisy, several in a row are a shift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from streaming_ml.models.reference import (
    EPSILON,
    as_float,
    category_key,
    shares_of,
)


def psi(expected: Sequence[float], observed: Sequence[int]) -> float:
    """Population stability index of observed counts against expected shares."""
    q = np.maximum(np.asarray(expected, dtype=float), EPSILON)
    p = np.maximum(np.asarray(shares_of(observed), dtype=float), EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def binned_ks(expected: Sequence[float], observed: Sequence[int]) -> float:
    """Largest gap between the two CDFs at the bin edges (the missing bin left out)."""
    q = np.asarray(expected[:-1], dtype=float)
    p = np.asarray(observed[:-1], dtype=float)
    if q.sum() == 0 or p.sum() == 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(p / p.sum()) - np.cumsum(q / q.sum()))))


def chi2_pvalue(expected: Sequence[float], observed: Sequence[int]) -> float:
    n = sum(observed)
    if n == 0:
        return 1.0
    q = np.maximum(np.asarray(expected, dtype=float), EPSILON)
    result = stats.chisquare(np.asarray(observed, dtype=float), q / q.sum() * n)
    return float(result.pvalue)


@dataclass
class Variable:
    """One feature (or the prediction) of a reference, with its bins' labels."""

    name: str
    reference: Mapping[str, Any]

    @property
    def numeric(self) -> bool:
        return self.reference["kind"] == "numeric"

    @property
    def expected(self) -> list[float]:
        if self.numeric:
            return list(self.reference["shares"])
        return [*self.reference["shares"].values(), 0.0]  # the last bin: unseen values

    def bin_of(self, value: Any) -> int:
        if self.numeric:
            x = as_float(value)
            edges = self.reference["edges"]
            return len(edges) + 1 if not math.isfinite(x) else int(np.searchsorted(edges, x))
        key = category_key(value)
        names = list(self.reference["shares"])
        return names.index(key) if key in names else len(names)

    def score(self, counts: Sequence[int]) -> dict[str, float]:
        expected = self.expected
        scores = {"psi": psi(expected, counts)}
        if self.numeric:
            scores["ks"] = binned_ks(expected, counts)
        else:
            scores["chi2_p"] = chi2_pvalue(expected, counts)
        return scores


@dataclass
class WindowResult:
    window: int
    rows: int
    scores: dict[str, dict[str, float]]
    alerts: list[str]  # variables whose streak just reached the alert count


@dataclass
class DriftWindow:
    """Tumbling windows of ``size`` observations of some variables against a reference.

    Plain data (``to_json``), so it is stored with the evaluator's state and a restart
    continues the window it was in.
    """

    size: int
    threshold: float
    alert_windows: int
    reference_tag: str | None = None
    window: int = 0
    rows: int = 0
    counts: dict[str, list[int]] = field(default_factory=dict)
    streaks: dict[str, int] = field(default_factory=dict)
    last: dict[str, dict[str, float]] = field(default_factory=dict)
    _variables: dict[str, Variable] = field(default_factory=dict, repr=False)

    def use(self, tag: str, variables: Mapping[str, Mapping[str, Any]]) -> None:
        """Score against ``variables`` (a model's reference); a new reference starts a
        new window, since counts in the old reference's bins mean nothing in the new."""
        self._variables = {name: Variable(name, ref) for name, ref in variables.items()}
        if tag != self.reference_tag:
            self.reference_tag = tag
            self.rows = 0
            self.counts = {}
            self.streaks = {}

    @property
    def ready(self) -> bool:
        return bool(self._variables)

    def observe(self, values: Mapping[str, Any]) -> WindowResult | None:
        """Count one observation; the window's result when this closes it."""
        for name, variable in self._variables.items():
            counts = self.counts.get(name)
            if counts is None:
                counts = self.counts[name] = [0] * len(variable.expected)
            counts[variable.bin_of(values.get(name))] += 1
        self.rows += 1
        return self._close() if self.rows >= self.size else None

    def _close(self) -> WindowResult:
        scores = {name: v.score(self.counts[name]) for name, v in self._variables.items()}
        alerts = []
        for name, score in scores.items():
            drifted = score["psi"] > self.threshold
            self.streaks[name] = self.streaks.get(name, 0) + 1 if drifted else 0
            if self.streaks[name] == self.alert_windows:
                alerts.append(name)
        result = WindowResult(self.window, self.rows, scores, alerts)
        self.last = scores
        self.window += 1
        self.rows = 0
        self.counts = {}
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "reference_tag": self.reference_tag,
            "window": self.window,
            "rows": self.rows,
            "counts": self.counts,
            "streaks": self.streaks,
            "last": self.last,
        }

    def restore(self, raw: Mapping[str, Any]) -> None:
        self.reference_tag = raw.get("reference_tag")
        self.window = int(raw.get("window", 0))
        self.rows = int(raw.get("rows", 0))
        self.counts = {k: list(v) for k, v in (raw.get("counts") or {}).items()}
        self.streaks = dict(raw.get("streaks") or {})
        self.last = dict(raw.get("last") or {})
