"""`streaming-ml load --csv`: a user's own rows, cleaned, inserted into the real table."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg2
import pytest
from typer.testing import CliRunner

from streaming_ml.cli import app
from streaming_ml.config import Settings, settings_env
from streaming_ml.datasets.load import load_listings, read_listings
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.schema.listing import LISTING_COLUMNS
from streaming_ml.stack import postgres_dsn


def test_load_csv_inserts_exactly_the_rows_that_can_be_listings(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = generate_listing_records(40, seed=77)
    names = [c.name for c in LISTING_COLUMNS]
    lines = [",".join(names)]
    lines += [", ".join(str(row[n]) for n in names) for row in rows]  # padded, as exported
    lines.append(",".join(["Fiesta", "1888", *["1"] * (len(names) - 2)]))  # too old a year
    lines.append(",".join(["Fiesta", "2015", "n/a", *["1"] * (len(names) - 3)]))  # no price
    csv = tmp_path / "own.csv"
    csv.write_text("\r\n".join(lines) + "\r\n")
    for key, value in settings_env(stack_settings).items():
        monkeypatch.setenv(key, value)

    result = CliRunner().invoke(app, ["load", "--csv", str(csv)])

    assert result.exit_code == 0, result.output
    assert "read 42 rows, kept 40, dropped 2" in result.output
    found = re.search(r"inserted 40 listings \(ids (\d+)\.\.(\d+)\)", result.output)
    assert found, result.output
    first, last = int(found.group(1)), int(found.group(2))
    conn = psycopg2.connect(postgres_dsn(stack_settings))
    try:
        stored = read_listings(conn, stack_settings.listings_table, range(first, last + 1))
    finally:
        conn.close()
    assert len(stored) == 40
    for row, (_, saved) in zip(rows, sorted(stored.items()), strict=True):
        assert saved["model"] == row["model"].strip()
        assert saved["year"] == row["year"]
        assert saved["price"] == row["price"]
        assert saved["mileage"] == row["mileage"]


def test_load_reports_its_progress_after_every_committed_batch(stack_settings: Settings) -> None:
    """What `streaming-ml load` draws its progress bar from: rows committed so far, of all."""
    seen: list[tuple[int, int]] = []
    summary = load_listings(
        postgres_dsn(stack_settings), 1_200, seed=78, batch=500,
        table=stack_settings.listings_table, progress=lambda *step: seen.append(step),
    )  # fmt: skip
    assert seen == [(500, 1_200), (1_000, 1_200), (1_200, 1_200)]
    assert len(summary.ids) == 1_200
