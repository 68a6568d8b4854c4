"""Turn listings into the model's input matrix, identically at training and serving time.

The preprocessing is plain data (``FeatureSpec``: the category lists and the median
mpg per model and fuel type) stored as JSON next to the booster, never pickled code,
so a saved model loads in any process that has this package, or can be rebuilt by
hand from the JSON. Categorical columns become integer codes that XGBoost treats as
categories (``feature_types="c"``); a value the training data never had becomes
missing (NaN) and is still priced by the trees' default branches. So does an unknown
engine size (recorded as 0 or null in real exports): the trees learn where such
listings go from the training rows that have one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from streaming_ml.errors import DataError
from streaming_ml.schema.listing import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES

# The raw features plus one derived input: mpg relative to the median mpg of the same
# model and fuel type in the training rows. Within a model, fuel economy tells engine
# variants and trims apart, and the ratio puts that on one scale for every model
# (5-fold CV RMSE 1128 -> 1121, docs/model.md). Mileage per year, model x year and
# model x engine categories, row counts per model and year and others were tried and
# dropped: no better.
RELATIVE_MPG = "relative_mpg"
INPUT_NAMES: tuple[str, ...] = (*FEATURES, RELATIVE_MPG)
INPUT_TYPES: tuple[str, ...] = tuple(
    "c" if name in CATEGORICAL_FEATURES else "q" for name in INPUT_NAMES
)
# The listing feature each input is credited to when a price is explained per feature
# (streaming_ml.contributions). relative_mpg goes to mpg: it is the listing's own fuel
# economy, put on its model's scale; model and fuel type only pick the scale, and a
# listing cannot change its mpg without changing relative_mpg.
FEATURE_OF_INPUT: dict[str, str] = {**{name: name for name in FEATURES}, RELATIVE_MPG: "mpg"}
_CATEGORY_POSITIONS = {name: INPUT_NAMES.index(name) for name in CATEGORICAL_FEATURES}
_NUMERIC_POSITIONS = {name: INPUT_NAMES.index(name) for name in NUMERIC_FEATURES}
_RELATIVE_MPG_POSITION = INPUT_NAMES.index(RELATIVE_MPG)
# Real exports record an unknown engine size as 0 (no car has a 0-litre engine); the
# model sees it as missing, like a null, so both price as "engine size unknown".
ENGINE_SIZE = "engineSize"


@dataclass(frozen=True)
class FeatureSpec:
    """What the model learned about its inputs that is not in the trees."""

    categories: dict[str, tuple[str, ...]]
    # Median mpg of the training rows per model, then per fuel type: the scale of
    # ``relative_mpg``.
    mpg_medians: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(INPUT_NAMES),
            "input_types": list(INPUT_TYPES),
            "categories": {name: list(values) for name, values in self.categories.items()},
            "mpg_medians": {model: dict(by_fuel) for model, by_fuel in self.mpg_medians.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            categories={name: tuple(v) for name, v in raw["categories"].items()},
            mpg_medians={
                model: {fuel: float(median) for fuel, median in by_fuel.items()}
                for model, by_fuel in raw["mpg_medians"].items()
            },
        )

    def encoders(self) -> dict[str, dict[str, float]]:
        return {
            name: {value: float(code) for code, value in enumerate(values)}
            for name, values in self.categories.items()
        }


def fit_feature_spec(frame: pd.DataFrame) -> FeatureSpec:
    """Fix category lists (sorted, so codes do not depend on row order) and the mpg
    medians from training rows; nothing here looks at the price."""
    categories = {
        name: tuple(sorted({str(v).strip() for v in frame[name].dropna()}))
        for name in CATEGORICAL_FEATURES
    }
    known = frame.dropna(subset=["model", "fuelType", "mpg"])
    by = [known[name].astype(str).str.strip() for name in ("model", "fuelType")]
    mpg_medians: dict[str, dict[str, float]] = {}
    for key, median in known["mpg"].astype(float).groupby(by).median().items():
        model, fuel = cast(tuple[str, str], key)  # two group keys: a pair per group
        mpg_medians.setdefault(model, {})[fuel] = float(median)
    return FeatureSpec(categories=categories, mpg_medians=mpg_medians)


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
        # Median mpg indexed by (model code, fuel code): one array lookup per row.
        self._mpg_medians = np.full(
            (len(spec.categories["model"]) + 1, len(spec.categories["fuelType"]) + 1), np.nan
        )
        for model, by_fuel in spec.mpg_medians.items():
            for fuel, median in by_fuel.items():
                model_code = self._encoders["model"].get(model)
                fuel_code = self._encoders["fuelType"].get(fuel)
                if model_code is not None and fuel_code is not None:
                    self._mpg_medians[int(model_code), int(fuel_code)] = median

    def from_columns(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray], rows: int
    ) -> np.ndarray:
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
        engine = matrix[:, _NUMERIC_POSITIONS[ENGINE_SIZE]]
        engine[engine == 0] = np.nan
        mpg = matrix[:, _NUMERIC_POSITIONS["mpg"]]
        matrix[:, _RELATIVE_MPG_POSITION] = mpg / self._median_mpg(matrix)
        return matrix.astype(np.float32)

    def _median_mpg(self, matrix: np.ndarray) -> np.ndarray:
        """The training median mpg of each row's model and fuel type; NaN when either
        is unknown (the last row and column of the table are all NaN)."""
        model = matrix[:, _CATEGORY_POSITIONS["model"]]
        fuel = matrix[:, _CATEGORY_POSITIONS["fuelType"]]
        model_index = np.where(np.isnan(model), -1, model).astype(np.intp)
        fuel_index = np.where(np.isnan(fuel), -1, fuel).astype(np.intp)
        return self._mpg_medians[model_index, fuel_index]

    def from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Matrix from a frame with (at least) the ``data.FEATURES`` columns."""
        missing = [name for name in FEATURES if name not in frame.columns]
        if missing:
            raise DataError(
                f"cannot price rows without the feature column(s) {', '.join(missing)}; "
                f"expected {', '.join(FEATURES)}"
            )
        columns: dict[str, Sequence[Any] | np.ndarray] = {}
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
