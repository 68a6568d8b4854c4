"""The bench's arithmetic: percentiles, stage split, growth verdict, targets, parsing."""

import math
from pathlib import Path

import numpy as np
import pytest

from streaming_ml.bench import (
    BenchOptions,
    RowTimes,
    check_targets,
    growth_verdict,
    parse_load_output,
    settings_env,
    summarize,
)
from streaming_ml.config import Settings
from streaming_ml.exceptions import BenchError


def test_summarize_percentiles_of_known_values() -> None:
    result = summarize(list(range(1, 101)))
    assert result["count"] == 100
    assert result["p50"] == pytest.approx(50.5)
    assert result["p99"] == pytest.approx(99.01)
    assert result["max"] == 100
    assert result["min"] == 1


def test_summarize_ignores_missing_values_and_reports_empty_as_none() -> None:
    assert summarize([1.0, math.nan, 3.0])["count"] == 2
    empty = summarize([])
    assert empty["count"] == 0
    assert empty["p50"] is None


def test_stages_split_one_row_into_its_parts() -> None:
    # listing 7: commit 1000, Kafka 1010, bridge read 1015, model call 1040..1050,
    # predictions topic 1053, written 1080.
    times = RowTimes.from_rows([(7, 1000, 1010, 1015, 1050, 10.0, 1080)], {7: 1053.0})
    stages = {name: float(v[0]) for name, v in times.stages().items()}
    assert stages == {
        "commit_to_kafka": 10,
        "kafka_to_bridge": 5,
        "bridge_batching": 25,
        "model_call": 10,
        "bridge_to_topic": 3,
        "topic_to_table": 27,
        "end_to_end": 80,
    }
    parts = sum(v for k, v in stages.items() if k != "end_to_end")
    assert parts == stages["end_to_end"]


def test_rows_without_topic_timestamp_leave_those_stages_unmeasured() -> None:
    times = RowTimes.from_rows([(1, 0, 1, 2, 4, 1.0, 9), (2, 0, 1, 2, 4, 1.0, 9)], {1: 5.0})
    summary = times.stage_summary()
    assert summary["bridge_to_topic"]["count"] == 1
    assert summary["end_to_end"]["count"] == 2


def test_growth_verdict_flags_latency_that_keeps_rising() -> None:
    commits = np.arange(300, dtype=float)
    steady, _ = growth_verdict(commits, np.full(300, 80.0))
    rising, details = growth_verdict(commits, np.linspace(50, 5_000, 300))
    assert steady is True
    assert rising is False
    assert details["last_third_p95_ms"] > details["limit_ms"]


def test_check_targets_compares_each_figure() -> None:
    doc = {
        "rate_rows_per_s": 1000.0,
        "latency_ms": {"p50": 120.0, "p99": 700.0},
        "max_sustained_rows_per_s": 6000.0,
        "bridge_rows_per_s": None,
        "predict_one_row_ms_p50": 3.2,
    }
    result = check_targets(doc)
    assert result["latency_ms.p50"]["met"] is True
    assert result["latency_ms.p99"]["met"] is False
    assert result["max_sustained_rows_per_s"]["met"] is True
    assert result["bridge_rows_per_s"]["met"] is None
    assert "note" not in result["latency_ms.p50"]
    assert "note" in check_targets({**doc, "rate_rows_per_s": 500.0})["latency_ms.p50"]


def test_parse_load_output_reads_the_summary_line() -> None:
    report = parse_load_output("inserted 3000 listings (ids 12..3011) in 2.5 s (1200 rows/s)\n")
    assert (report.inserted, report.first_id, report.last_id) == (3000, 12, 3011)
    assert report.rows_per_s == pytest.approx(1200)
    with pytest.raises(BenchError, match="summary"):
        parse_load_output("inserted 0 listings")


def test_settings_env_round_trips_through_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        kafka_port=19092, state_dir=Path("/tmp/x"), service_url="http://127.0.0.1:1", log_json=True
    )
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_rows_per_commit_follows_the_insert_mode() -> None:
    assert BenchOptions(rate=1000).rows_per_commit(1000) == 10
    assert BenchOptions(insert_mode="single").rows_per_commit(8000) == 1
    assert BenchOptions(batch_rows=50).rows_per_commit(1000) == 50
    assert BenchOptions().rows_per_commit(4000, commits_per_s=20) == 200


def test_options_reject_nonsense() -> None:
    with pytest.raises(BenchError, match="--rate"):
        BenchOptions(rate=0).check()
    with pytest.raises(BenchError, match="--insert-mode"):
        BenchOptions(insert_mode="bulk").check()  # type: ignore[arg-type]
    BenchOptions.quick().check()
