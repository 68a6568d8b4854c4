"""How often the "model degraded" detector alarms on normal outcomes, and how soon it
catches a shift, replayed on a real model's errors.

    .venv/bin/python scripts/degraded_detector.py                 # the test suite's model
    .venv/bin/python scripts/degraded_detector.py --model ford_price:TAG --alpha 0.9999

The model prices seeded synthetic listings: normal ones, and the ``price-shift`` and
``feature-shift`` scenarios' shifted ones (``streaming-ml load --scenario``). Each
outcome's capped log error goes through the evaluator's own ``PageHinkley``, one run per
simulated partition:

- false alarms: ``--runs`` runs of ``--normal`` outcomes drawn from the normal pool
  (without replacement while the pool is large enough);
- detection: ``--runs`` runs of ``--lead-in`` normal outcomes then ``--shifted`` shifted
  ones, per scenario: how many caught the shift, how many alarmed before it, and the
  median number of shifted outcomes until the alarm.

Without ``--model`` it trains the test suite's fixture model (tests/fixtures/model.py:
3,000 rows, seed 7, 150 trees) in a temporary BentoML store. Prints one JSON object;
docs/monitoring.md quotes its figures. A calibration tool: tests never run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import numpy as np

from streaming_ml.config import Settings
from streaming_ml.datasets.load import FEATURE_SHIFT, PRICE_SHIFT
from streaming_ml.datasets.synthetic import Shift, generate_listing_records
from streaming_ml.evaluation.accuracy import (
    DETECTOR_ALPHA,
    DETECTOR_DELTA,
    DETECTOR_MIN_OUTCOMES,
    PageHinkley,
    capped_log_error,
)
from streaming_ml.log import configure_logging

POOL_ROWS = 20_000


def fixture_model() -> str:
    """Train the test suite's model in a store of its own and return its tag."""
    # Before bentoml is first imported: it reads its home once.
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="sml-detector-")
    from streaming_ml.models.train import TrainParams, train_model

    trained = train_model(
        model_name=Settings().model_name, data_path=None, synthetic_rows=3_000, seed=7,
        version=None, params=TrainParams(n_estimators=150, learning_rate=0.15),
    )  # fmt: skip
    return str(trained["tag"])


def log_errors(tag: str, pools: int, first_seed: int, shift: Shift | None) -> np.ndarray:
    """The model's capped log errors on ``pools`` seeded batches of synthetic listings."""
    from streaming_ml.models.loader import load_price_model

    model = load_price_model(tag)
    errors: list[float] = []
    for seed in range(first_seed, first_seed + pools):
        records = generate_listing_records(POOL_ROWS, seed, shift=shift)
        for record, predicted in zip(records, model.predict_records(records), strict=True):
            if record["price"] > 0 and predicted > 0:
                errors.append(capped_log_error(float(predicted), float(record["price"])))
    return np.array(errors)


def first_alarm(errors: np.ndarray, alpha: float, threshold: float) -> int | None:
    """The 1-based outcome at which the detector first fires, if it does."""
    detector = PageHinkley(DETECTOR_MIN_OUTCOMES, DETECTOR_DELTA, threshold, alpha=alpha)
    for i, error in enumerate(errors):
        detector.update(float(error))
        if detector.drift_detected:
            return i + 1
    return None


def draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(pool, n, replace=n > len(pool))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model tag in the local store (default: train one)")
    parser.add_argument("--alpha", type=float, default=DETECTOR_ALPHA)
    parser.add_argument("--threshold", type=float, default=Settings().degraded_threshold)
    parser.add_argument("--runs", type=int, default=40, help="simulated partitions per case")
    parser.add_argument("--normal", type=int, default=20_000, help="outcomes per normal run")
    parser.add_argument("--lead-in", type=int, default=1_000)
    parser.add_argument("--shifted", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_logging("WARNING")
    tag = args.model or fixture_model()
    print(f"pricing synthetic listings with {tag}", file=sys.stderr)
    normal = log_errors(tag, 10, 2_000, None)
    shifted = {
        "price-shift": log_errors(tag, 3, 3_000, PRICE_SHIFT),
        "feature-shift": log_errors(tag, 3, 4_000, FEATURE_SHIFT),
    }
    rng = np.random.default_rng(args.seed)
    print(f"false alarms: {args.runs} runs of {args.normal:,}", file=sys.stderr)
    alarms = [
        found
        for _ in range(args.runs)
        if (found := first_alarm(draw(rng, normal, args.normal), args.alpha, args.threshold))
    ]
    report: dict[str, Any] = {
        "model": tag, "alpha": args.alpha, "threshold": args.threshold,
        "normal_error_mean": round(float(normal.mean()), 4),
        "normal_error_std": round(float(normal.std()), 4),
        "false_alarms": {"runs": args.runs, "outcomes": args.normal, "alarmed_at": sorted(alarms)},
    }  # fmt: skip
    for scenario, pool in shifted.items():
        print(f"{scenario}: {args.runs} runs", file=sys.stderr)
        caught, early = [], 0
        for _ in range(args.runs):
            run = np.concatenate([draw(rng, normal, args.lead_in), draw(rng, pool, args.shifted)])
            found = first_alarm(run, args.alpha, args.threshold)
            if found is not None and found <= args.lead_in:
                early += 1
            elif found is not None:
                caught.append(found - args.lead_in)
        report[scenario] = {
            "runs": args.runs, "caught": len(caught), "alarmed_before_the_shift": early,
            "median_after_shift": float(np.median(caught)) if caught else None,
            "error_mean": round(float(pool.mean()), 4),
        }  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
