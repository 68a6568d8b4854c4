"""How far the synthetic generator drifts from the real data, as the drift monitor sees it.

    .venv/bin/python scripts/generator_drift.py --data ../shared/data/ford_train.csv

The reference is built from the cleaned real rows exactly as training builds it
(``reference_of``), then ``generate_listings(rows, seed)`` is scored in the monitor's
tumbling windows (``DriftWindow``). Prints, per feature, the mean and max PSI per window
for the synthetic rows and, as the noise floor, for a shuffled copy of the real rows
(the ones the reference was built from, so that floor is a little optimistic).
Exits 1 when a feature's synthetic mean or max PSI is above ``--max-mean``/``--max-max``.
Only for calibrating ``data.py`` by hand: tests never need the data file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from streaming_ml.config import REPO_ROOT
from streaming_ml.datasets.csv import load_listings_csv
from streaming_ml.datasets.synthetic import generate_listings
from streaming_ml.evaluation.drift import DriftWindow
from streaming_ml.log import configure_logging
from streaming_ml.models.reference import reference_of
from streaming_ml.schema.listing import FEATURES

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ford_train.csv"


def window_psi(reference: dict, frame: pd.DataFrame, size: int) -> dict[str, list[float]]:
    """Every closed window's PSI per feature (a partial last window is not scored, as in
    the evaluator)."""
    window = DriftWindow(size=size, threshold=np.inf, alert_windows=1)
    window.use("reference", reference["features"])
    scores: dict[str, list[float]] = {name: [] for name in FEATURES}
    for record in frame.loc[:, list(FEATURES)].to_dict("records"):
        result = window.observe(record)
        if result is not None:
            for name in FEATURES:
                scores[name].append(result.scores[name]["psi"])
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Ford training CSV")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows to score")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=500, help="rows per drift window")
    parser.add_argument("--max-mean", type=float, default=0.1)
    parser.add_argument("--max-max", type=float, default=0.2)
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"{args.data} not found: pass the real training CSV with --data", file=sys.stderr)
        return 2
    configure_logging("WARNING")
    real = load_listings_csv(args.data).frame
    reference = reference_of(real, real["price"].to_numpy(dtype=float))
    synthetic = window_psi(reference, generate_listings(args.rows, seed=args.seed), args.window)
    shuffled = real.sample(frac=1.0, random_state=args.seed)
    floor = window_psi(reference, shuffled, args.window)
    print(f"PSI per {args.window}-row window against the real reference (mean / max)\n")
    print("| feature | synthetic | real, shuffled |\n|---|---|---|")
    failed = []
    for name in FEATURES:
        mean, high = float(np.mean(synthetic[name])), float(np.max(synthetic[name]))
        print(
            f"| {name} | {mean:.3f} / {high:.3f} "
            f"| {np.mean(floor[name]):.3f} / {np.max(floor[name]):.3f} |"
        )
        if mean > args.max_mean or high > args.max_max:
            failed.append(name)
    if failed:
        print(
            f"\nabove {args.max_mean} mean or {args.max_max} max: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
