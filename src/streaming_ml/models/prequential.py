"""``streaming-ml evaluate --prequential``: the online candidates' table, and the
price-shift study, from a CSV read as a stream in file order (or seeded synthetic rows)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from streaming_ml.datasets.csv import listing_records, load_listings_csv
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.errors import ConfigError
from streaming_ml.models import online
from streaming_ml.models import study as study_mod

SYNTHETIC_ROWS = 14_372  # as many as the real training split


def stream_of(data: Path | None, rows: int | None) -> tuple[list[dict[str, Any]], str]:
    """The rows to stream, in file order, and where they came from."""
    if data is not None:
        records = listing_records(load_listings_csv(data).frame)
        source = str(data.name)
    else:
        records = generate_listing_records(rows or SYNTHETIC_ROWS, seed=42)
        source = "synthetic (seed 42)"
    return records[:rows] if rows else records, source


def run_prequential(
    data: Path | None,
    candidate: str,
    rows: int | None,
    scenario: str | None,
    plot: Path | None,
) -> dict[str, Any]:
    """The report as a dict (``--json`` prints it; otherwise ``render`` does)."""
    console = Console(stderr=True)
    if scenario is not None:
        if scenario != "price-shift":
            raise ConfigError(f"--scenario: only price-shift is studied, not {scenario!r}")
        name = online.DEFAULT_CANDIDATE if candidate == "all" else candidate
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("price-shift study", total=None)
            study = study_mod.price_shift_study(
                name, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
        if plot is not None:
            study.plot(str(plot))
        return {"scenario": scenario, "candidate": name, **study.summary()}
    names = list(online.CANDIDATES) if candidate == "all" else candidate.split(",")
    unknown = [n for n in names if n not in online.CANDIDATES]
    if unknown:
        raise ConfigError(f"unknown candidate(s) {unknown}; one of {sorted(online.CANDIDATES)}")
    records, source = stream_of(data, rows)
    with Progress(console=console, transient=True) as bar:
        tasks = {n: bar.add_task(f"{n}: predict, then learn", total=len(records)) for n in names}
        result = study_mod.compare(
            records, names, lambda n, done, total: bar.update(tasks[n], completed=done)
        )
    return {"data": source, **result}


def render(report: Mapping[str, Any]) -> Any:
    """The terminal table of a report."""
    if "scenario" in report:
        table = Table(title=f"{report['scenario']}: windowed MAE (last {report['window']})")
        columns = ("model", "before shift", "peak after", "at end", "labels to recover",
                   "within 10 % after")  # fmt: skip
        for column in columns:
            table.add_column(column, justify="right" if column != "model" else "left")
        for name in ("static", "online"):
            r = report[name]
            recover = r["labels_to_recover"]
            table.add_row(
                name, f"£{r['mae_before_shift']:,.0f}", f"£{r['mae_peak_after']:,.0f}",
                f"£{r['mae_at_end']:,.0f}", "never" if recover is None else f"{recover:,}",
                f"{r['share_within_10pct_after']:.0%}",
            )  # fmt: skip
        return table
    load = ", ".join(f"{x:.2f}" for x in report["load_average"])
    table = Table(title=f"Prequential, {report['rows']:,} rows of {report['data']} (load {load})")
    for column in ("model", "predict ms mean/p50/p99", "learn ms mean/p50/p99",
                   "both ms mean/p50/p99", "records/s", "MAE", "RMSE", "MAPE"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for c in report["candidates"]:

        def times(t: Mapping[str, float]) -> str:
            return f"{t['mean_ms']:.3f} / {t['p50_ms']:.3f} / {t['p99_ms']:.3f}"

        table.add_row(
            c["candidate"], times(c["predict"]), times(c["learn"]), times(c["predict_learn"]),
            f"{c['records_per_s']:,.0f}", f"£{c['mae']:,.0f}", f"£{c['rmse']:,.0f}",
            f"{c['mape']:.1%}",
        )  # fmt: skip
    return table
