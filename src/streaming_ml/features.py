"""Turn listings into the model's input matrix, identically at training and serving time.

The preprocessing is plain data (``FeatureSpec``: the category lists) stored as JSON
next to the booster, never pickled code, so a saved model loads in any process that
has this package, or can be rebuilt by hand from the JSON. Categorical columns become
integer codes that XGBoost treats as categories (``feature_types="c"``); a value the
training data never had becomes missing (NaN) and is still priced by the trees'
default branches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from streaming_ml.data import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from streaming_ml.exceptions import DataError

# The raw features are the model inputs. Car age and mileage per year were tried and
# dropped: trees already split on year and mileage jointly, and CV got no better
# (docs/model.md).
INPUT_NAMES: tuple[str, ...] = FEATURES
INPUT_TYPES: tuple[str, ...] = tuple(
    "c" if name in CATEGORICAL_FEATURES else "q" for name in INPUT_NAMES
)
_CATEGORY_POSITIONS = {name: INPUT_NAMES.index(name) for name in CATEGORICAL_FEATURES}
_NUMERIC_POSITIONS = {name: INPUT_NAMES.index(name) for name in NUMERIC_FEATURES}


@dataclass(frozen=True)
class FeatureSpec:
    """What the model learned about its inputs that is not in the trees."""

    categories: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(INPUT_NAMES),
            "input_types": list(INPUT_TYPES),
            "categories": {name: list(values) for name, values in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSpec:
        return cls(categories={name: tuple(v) for name, v in raw["categories"].items()})

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
    return FeatureSpec(categories=categories)


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
        return matrix.astype(np.float32)

    def from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Matrix from a frame with (at least) the ``data.FEATURES`` columns."""
        missing = [name for name in FEATURES if name not in frame.columns]
        if missing:
            raise DataError(
                f"cannot price rows without the feature column(s) {', '.join(missing)}; "
                f"expected {', '.join(FEATURES)}"
            )
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
