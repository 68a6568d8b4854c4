"""What every price model offers, whatever its kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming_ml.schema.listing import FEATURES


@dataclass(frozen=True)
class Explained:
    """Prices with their decomposition: ``base[i] + amounts[i].sum() == prices[i]`` (GBP).

    ``amounts`` has one column per listing feature (``data.FEATURES`` order)."""

    prices: np.ndarray
    base: np.ndarray
    amounts: np.ndarray

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the service's ``explanation`` object."""
        return {
            "base_price": float(self.base[i]),
            "contributions": dict(zip(FEATURES, self.amounts[i].tolist(), strict=True)),
        }
