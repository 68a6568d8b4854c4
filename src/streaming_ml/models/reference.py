"""The reference a model carries for drift: each feature's training distribution (decile
bins for numbers plus a bin for missing values, shares for categories) and that of the
model's own predictions, stored with the model at training time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streaming_ml.schema.listing import CATEGORICAL_FEATURES, FEATURES

DECILES = np.linspace(0.1, 0.9, 9)


EPSILON = 1e-4


UNSEEN = "__unseen__"


PREDICTION = "prediction"  # the name the prediction's distribution is scored under


def _numeric_reference(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    edges = np.unique(np.quantile(finite, DECILES)) if finite.size else np.array([])
    counts = numeric_counts(edges.tolist(), values)
    return {"kind": "numeric", "edges": edges.tolist(), "shares": shares_of(counts)}


def numeric_counts(edges: Sequence[float], values: np.ndarray) -> list[int]:
    """Counts per bin: (-inf, e0], (e0, e1], ..., (e_last, inf), then missing."""
    finite = np.isfinite(values)
    bins = np.searchsorted(np.asarray(edges, dtype=float), values[finite], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1).tolist()
    return [*counts, int((~finite).sum())]


def category_key(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else None


def _category_reference(values: Sequence[Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for value in values:
        key = category_key(value)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values()) or 1
    return {"kind": "category", "shares": {k: c / total for k, c in sorted(counts.items())}}


def shares_of(counts: Sequence[int]) -> list[float]:
    total = sum(counts) or 1
    return [c / total for c in counts]


def as_float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def reference_of(rows: Mapping[str, Sequence[Any]], predictions: Sequence[float]) -> dict[str, Any]:
    """The reference stored as ``metadata["reference"]``: per feature (columns of the
    training frame, by name) and for the model's own predictions on those rows."""
    features: dict[str, Any] = {}
    for name in FEATURES:
        column = list(rows[name])
        if name in CATEGORICAL_FEATURES:
            features[name] = _category_reference(column)
        else:
            features[name] = _numeric_reference(np.array([as_float(v) for v in column]))
    return {
        "rows": len(predictions),
        "features": features,
        PREDICTION: _numeric_reference(np.asarray(predictions, dtype=float)),
    }
