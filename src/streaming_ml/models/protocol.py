"""What every price model offers, whatever its kind."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import numpy as np

from streaming_ml.schema.listing import FEATURES


class ExplanationRow(TypedDict):
    base_price: float
    contributions: dict[str, float]


@dataclass(frozen=True)
class Explained:
    """Prices with their decomposition: ``base[i] + amounts[i].sum() == prices[i]`` (GBP).

    ``amounts`` has one column per listing feature (``data.FEATURES`` order)."""

    prices: np.ndarray
    base: np.ndarray
    amounts: np.ndarray

    def row(self, i: int) -> ExplanationRow:
        """Row ``i`` as the service's ``explanation`` object."""
        return {
            "base_price": float(self.base[i]),
            "contributions": dict(zip(FEATURES, self.amounts[i].tolist(), strict=True)),
        }


class PriceModelProtocol(Protocol):
    """A price model of either kind: XGBoost's ``booster.PriceModel`` or
    ``online.OnlinePriceModel``. What the service, its lineup and canary, the loader and an
    online model's base rely on; anything kind-specific (frames, learning) stays with the
    concrete class."""

    @property
    def tag(self) -> str:
        """``name:version`` in the model store (``"(unsaved)"`` before a save)."""
        ...

    def predict_records(self, records: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """One GBP price per record, in order; records are dicts keyed by feature name."""
        ...

    def explain_records(self, records: Iterable[Mapping[str, Any]]) -> Explained:
        """The prices ``predict_records`` gives, each with its per-feature decomposition."""
        ...
