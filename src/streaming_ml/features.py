"""Turn listings into the model's input matrix, identically at training and serving time.

The preprocessing is plain data (``FeatureSpec``: category lists and a reference
year) stored as JSON next to the booster, never pickled code, so a model saved here
loads in any process that has this package, or can be rebuilt by hand from the JSON.
Categorical columns become integer codes that XGBoost treats as categories
(``feature_types="c"``); a value the training data never had becomes missing
(NaN) and is still priced by the trees' default branches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from streaming_ml.data import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES

# Derived inputs, appended after the raw features. Usage intensity separates a
# hard-driven young car from a garage queen better than mileage or year alone.
DERIVED_FEATURES: tuple[str, ...] = ("mileage_per_year",)
INPUT_NAMES: tuple[str, ...] = FEATURES + DERIVED_FEATURES
INPUT_TYPES: tuple[str, ...] = tuple(
    "c" if name in CATEGORICAL_FEATURES else "q" for name in INPUT_NAMES
)
_CATEGORY_POSITIONS = {name: INPUT_NAMES.index(name) for name in CATEGORICAL_FEATURES}
_NUMERIC_POSITIONS = {name: INPUT_NAMES.index(name) for name in NUMERIC_FEATURES}


@dataclass(frozen=True)
class FeatureSpec:
    """What the model learned about its inputs that is not in the trees."""

    categories: dict[str, tuple[str, ...]]
    # Ages (for mileage per year) are counted from the newest training year, so a
    # prediction does not drift with the calendar.
    reference_year: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(INPUT_NAMES),
            "input_types": list(INPUT_TYPES),
            "categories": {name: list(values) for name, values in self.categories.items()},
            "reference_year": self.reference_year,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            categories={name: tuple(values) for name, values in raw["categories"].items()},
            reference_year=int(raw["reference_year"]),
        )

    def encoders(self) -> dict[str, dict[str, float]]:
        return {
            name: {value: float(code) for code, value in enumerate(values)}
            for name, values in self.categories.items()
        }


def fit_feature_spec(frame: pd.DataFrame) -> FeatureSpec:
    """Fix category lists (sorted, so codes do not depend on row order) from training rows."""
    categories = {
        name: tuple(sorted({str(v).strip() for v in frame[name].dropna()}))
        for name in CATEGORICAL_FEATURES
    }
    return FeatureSpec(categories=categories, reference_year=int(frame["year"].max()))


def _number(value: Any) -> float:
    if value is None or value is pd.NA:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _code(encoder: Mapping[str, float], value: Any) -> float:
    if isinstance(value, str):
        return encoder.get(value.strip(), math.nan)
    return math.nan


def _add_derived(matrix: np.ndarray, reference_year: int) -> None:
    year = matrix[:, _NUMERIC_POSITIONS["year"]]
    mileage = matrix[:, _NUMERIC_POSITIONS["mileage"]]
    # +1 so a car registered this year counts as one year of use, not zero.
    years_used = np.maximum(reference_year - year + 1.0, 1.0)
    matrix[:, INPUT_NAMES.index("mileage_per_year")] = mileage / years_used


class FeatureEncoder:
    """Builds the float32 input matrix; one instance per loaded model (holds lookups)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._encoders = spec.encoders()

    def from_columns(self, columns: Mapping[str, Sequence[Any]], rows: int) -> np.ndarray:
        matrix = np.empty((rows, len(INPUT_NAMES)), dtype=np.float64)
        for name, position in _CATEGORY_POSITIONS.items():
            encoder = self._encoders[name]
            matrix[:, position] = [_code(encoder, v) for v in columns[name]]
        for name, position in _NUMERIC_POSITIONS.items():
            values = columns[name]
            try:
                matrix[:, position] = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                matrix[:, position] = [_number(v) for v in values]
        _add_derived(matrix, self.spec.reference_year)
        return matrix.astype(np.float32)

    def from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Matrix from a frame with (at least) the ``data.FEATURES`` columns."""
        columns: dict[str, Sequence[Any]] = {}
        for name in FEATURES:
            series = frame[name]
            if name in _NUMERIC_POSITIONS and series.dtype.kind not in "fiu":
                # Nullable Int64/Float64 and object columns: NA -> NaN.
                series = pd.to_numeric(series, errors="coerce").astype("float64")
            columns[name] = series.to_numpy()
        return self.from_columns(columns, len(frame))

    def from_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Matrix from dicts keyed by feature name; missing keys become NaN."""
        records = list(records)
        columns = {name: [r.get(name) for r in records] for name in FEATURES}
        return self.from_columns(columns, len(records))
