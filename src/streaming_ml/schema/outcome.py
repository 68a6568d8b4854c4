"""An outcome: one served price judged against its listing's label, as the outcomes topic
carries it (the fields of ``schema.fields.OUTCOME_FIELDS``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """One prediction judged against its label (fields of ``OUTCOME_FIELDS``)."""

    listing_id: int
    model_tag: str
    arm: str
    actual_price: float
    predicted_price: float
    priced_ts_ms: int
    labelled_ts_ms: int
    evaluated_ts_ms: int
    model_name: str | None = None
    model_version: str | None = None
    features: Mapping[str, Any] | None = None

    @property
    def error(self) -> float:
        return self.predicted_price - self.actual_price

    @property
    def abs_pct_error(self) -> float | None:
        return abs(self.error) / abs(self.actual_price) if self.actual_price else None

    @property
    def label_lag_ms(self) -> int:
        """How long after the priced row's commit the label was committed (0 when the
        label came with the row itself)."""
        return max(0, self.labelled_ts_ms - self.priced_ts_ms)

    def record(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "model_tag": self.model_tag,
            "arm": self.arm,
            "actual_price": self.actual_price,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "predicted_price": self.predicted_price,
            "error": self.error,
            "abs_pct_error": self.abs_pct_error,
            "label_lag_ms": self.label_lag_ms,
            "priced_ts_ms": self.priced_ts_ms,
            "labelled_ts_ms": self.labelled_ts_ms,
            "evaluated_ts_ms": self.evaluated_ts_ms,
            "features": (
                json.dumps(self.features, sort_keys=True, default=str)
                if self.features is not None
                else None
            ),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Outcome:
        return cls(
            listing_id=int(record["listing_id"]),
            model_tag=str(record["model_tag"]),
            arm=str(record["arm"]),
            actual_price=float(record["actual_price"]),
            predicted_price=float(record["predicted_price"]),
            priced_ts_ms=int(record["priced_ts_ms"]),
            labelled_ts_ms=int(record["labelled_ts_ms"]),
            evaluated_ts_ms=int(record["evaluated_ts_ms"]),
            model_name=record.get("model_name"),
            model_version=record.get("model_version"),
            features=json.loads(record["features"]) if record.get("features") else None,
        )
