"""The bench's arithmetic: percentiles, stage split, the bridge's cost per step, growth
verdict, targets, parsing; its options and CLI, and the summary and plot of the figures."""

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import streaming_ml.bench
from streaming_ml.bench import (
    BenchOptions,
    RowTimes,
    _bridge_only_runs,
    check_targets,
    growth_verdict,
    parse_load_output,
    settings_env,
    summarize,
)
from streaming_ml.bench.bridge_only import _add_up
from streaming_ml.bench.children import wait_all_exit
from streaming_ml.bench.hops import hop_summary
from streaming_ml.bench.report import (
    bridge_process_rows,
    bridge_step_rows,
    explanation_rows,
    hop_rows,
    plot_bench,
    print_summary,
)
from streaming_ml.bench.stats import bridge_steps_per_event
from streaming_ml.cli import app
from streaming_ml.config import Settings
from streaming_ml.errors import BenchError


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


STEP_SECONDS = {
    "collect": 0.002, "decode": 0.0125, "plan": 0.004, "model_call": 0.025,
    "encode": 0.005, "produce_commit": 0.0015, "other": 0.0,
}  # fmt: skip


def test_bridge_steps_cost_their_seconds_over_the_events_in_microseconds() -> None:
    steps = bridge_steps_per_event(STEP_SECONDS, 1000, rows_per_s=20_000.0)
    assert steps == {
        "events": 1000,
        "steps_us_per_event": {
            "collect": 2.0, "decode": 12.5, "plan": 4.0, "model_call": 25.0,
            "encode": 5.0, "produce_commit": 1.5, "other": 0.0,
        },
        "total_us_per_event": 50.0,
        "share_pct": {
            "collect": 4.0, "decode": 25.0, "plan": 8.0, "model_call": 50.0,
            "encode": 10.0, "produce_commit": 3.0, "other": 0.0,
        },
        "wall_us_per_event": 50.0,
    }  # fmt: skip
    # Rounded to 0.1 µs and 0.1 %; the total from the unrounded seconds; no wall time
    # without a rate.
    steps = bridge_steps_per_event({"decode": 0.00001, "encode": 0.00002}, 3)
    assert steps == {
        "events": 3,
        "steps_us_per_event": {"decode": 3.3, "encode": 6.7},
        "total_us_per_event": 10.0,
        "share_pct": {"decode": 33.3, "encode": 66.7},
    }


def test_bridge_steps_are_unmeasured_without_events_or_timed_steps() -> None:
    assert bridge_steps_per_event(STEP_SECONDS, 0) is None
    assert bridge_steps_per_event({}, 1000) is None  # a bridge from before step timing
    assert bridge_steps_per_event(dict.fromkeys(STEP_SECONDS, 0.0), 1000) is None


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
        "latency_ms": {"p50": 49.0, "p99": 201.0},
        "max_sustained_rows_per_s": 10_000.0,
        "bridge_rows_per_s": None,
        "predict_one_row_ms_p50": 2.1,
        "predict_1000_rows_ms_p50": 10.0,
    }
    result = check_targets(doc)
    assert result["latency_ms.p50"]["met"] is True
    assert result["latency_ms.p99"]["met"] is False
    assert result["max_sustained_rows_per_s"]["met"] is True
    assert result["bridge_rows_per_s"]["met"] is None
    assert result["predict_one_row_ms_p50"]["met"] is False
    assert result["predict_1000_rows_ms_p50"] == {"target": "<= 10", "measured": 10.0, "met": True}
    assert "note" not in result["latency_ms.p50"]
    assert "note" in check_targets({**doc, "rate_rows_per_s": 500.0})["latency_ms.p50"]


# Two rows: committed at 0 and 10 ms, read by Debezium 4 and 15 ms in, appended at 12 and 30.
HOPS_DOC = {
    **hop_summary({1: (0.0, 4.0, 12.0), 2: (10.0, 15.0, 30.0)}),
    "connect_jmx": {
        "figures": {
            "kafka_connect_source_task_metrics_poll_batch_avg_time_ms": 11.0,
            "kafka_producer_producer_metrics_record_queue_time_avg": 0.8,
        }
    },
}


def test_hops_split_commit_to_kafka_row_by_row() -> None:
    hops = HOPS_DOC["hops_ms"]
    assert HOPS_DOC["rows"] == 2
    assert (hops["commit_to_debezium"]["min"], hops["commit_to_debezium"]["max"]) == (4.0, 5.0)
    assert (hops["debezium_to_kafka"]["min"], hops["debezium_to_kafka"]["max"]) == (8.0, 15.0)
    # Means 4.5 and 11.5 of a 16 ms stage mean.
    assert HOPS_DOC["share_of_mean"] == {"commit_to_debezium": 0.281, "debezium_to_kafka": 0.719}
    assert hop_summary({}) == {"rows": 0}
    assert hop_rows(HOPS_DOC) == [
        ("commit_to_debezium", "4.5", "4.5", "5.0", "28%"),
        ("debezium_to_kafka", "11.5", "11.5", "14.9", "72%"),
    ]


def test_summary_shows_the_hops_and_the_baseline_ratio() -> None:
    console = Console(record=True, width=140)
    doc = {
        "bench": {"profile": "full"}, "targets": {}, "commit_to_kafka_hops": HOPS_DOC,
        "baseline_rows_per_s": 300.0, "bridge_vs_baseline_rows_per_s": 22.5,
    }  # fmt: skip
    print_summary(doc, console)
    text = console.export_text()
    assert "commit_to_kafka, hop by hop (2 rows)" in text
    assert "baseline (one POST /predict per event): 300.0 rows/s; the bridge does 22.5x" in text


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
    with pytest.raises(BenchError, match="--bridges must be at least 1, got 0"):
        BenchOptions(bridges=0).check()
    with pytest.raises(BenchError, match="--stream-bridges must be at least 1, got 0"):
        BenchOptions(stream_bridges=0).check()
    with pytest.raises(BenchError, match="--compare-kafka-nodes must be at least 1, got 0"):
        BenchOptions(compare_kafka_nodes=0).check()
    with pytest.raises(BenchError, match="drop --skip-throughput"):
        BenchOptions(compare_kafka_nodes=3, run_throughput=False).check()
    BenchOptions.quick().check()
    BenchOptions(compare_kafka_nodes=3).check()


def test_bridge_only_rounds_time_one_bridge_then_the_asked_number() -> None:
    assert BenchOptions().bridge_counts == (1, 2)
    assert BenchOptions.quick().bridge_counts == (1, 2)
    assert BenchOptions(bridges=4).bridge_counts == (1, 4)
    assert BenchOptions(bridges=1).bridge_counts == (1,)
    BenchOptions(bridges=1).check()


def _bench_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, list[BenchOptions]]:
    """``streaming-ml bench ARGS`` with run_bench replaced: checks and records the options."""
    seen: list[BenchOptions] = []

    def fake_run_bench(settings: Settings, options: BenchOptions, **_: Any) -> dict[str, Any]:
        options.check()
        seen.append(options)
        return {}

    monkeypatch.setattr(streaming_ml.bench, "run_bench", fake_run_bench)
    result = CliRunner().invoke(app, ["bench", *args])
    return result, seen


def test_bench_cli_passes_bridges_on_and_keeps_the_default_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, seen = _bench_cli(monkeypatch, "--quick", "--bridges", "3")
    assert result.exit_code == 0, result.output
    assert (seen[0].profile, seen[0].bridges) == ("quick", 3)
    result, seen = _bench_cli(monkeypatch)
    assert result.exit_code == 0, result.output
    assert seen[0].bridges == 2


def test_bench_cli_rejects_fewer_than_one_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = _bench_cli(monkeypatch, "--bridges", "0")
    assert result.exit_code != 0
    assert "--bridges must be at least 1, got 0" in result.output
    assert seen == []


def test_report_shows_each_bridge_count_with_its_speed_up_over_one() -> None:
    doc = {
        "bridge_rows_per_s": 4000.0,
        "bridge_rows_per_s_by_processes": {"1": 4000.0, "2": 6000.0},
    }
    assert bridge_process_rows(doc) == [("bridge_rows_per_s, 2 processes (1.50x of 1)", "6,000.0")]
    # Counts sort as numbers, an unmeasured figure shows as a dash and no speed-up.
    doc["bridge_rows_per_s_by_processes"] = {"1": 4000.0, "10": 9000.0, "3": None}
    assert bridge_process_rows(doc) == [
        ("bridge_rows_per_s, 3 processes", "—"),
        ("bridge_rows_per_s, 10 processes (2.25x of 1)", "9,000.0"),
    ]
    # --bridges 1, or a document from before --bridges: only the one-process figure.
    assert bridge_process_rows({"bridge_rows_per_s_by_processes": {"1": 4000.0}}) == []
    assert bridge_process_rows({"bridge_rows_per_s": 4000.0}) == []


def test_summary_table_prints_both_bridge_figures_next_to_each_other() -> None:
    doc: dict[str, Any] = {
        "bench": {"profile": "quick"},
        "bridge_rows_per_s": 4000.0,
        "bridge_rows_per_s_by_processes": {"1": 4000.0, "2": 7000.0},
    }
    doc["targets"] = check_targets(doc)
    console = Console(record=True, width=200)
    print_summary(doc, console)
    lines = console.export_text().splitlines()
    one = next(i for i, line in enumerate(lines) if "bridge_rows_per_s " in line)
    assert "4,000.0" in lines[one]
    assert "bridge_rows_per_s, 2 processes (1.75x of 1)" in lines[one + 1]
    assert "7,000.0" in lines[one + 1]


@pytest.mark.parametrize(
    "bridge_figures",
    [
        {"bridge_rows_per_s": 4000.0, "bridge_rows_per_s_by_processes": {"1": 4000.0, "2": None}},
        {"bridge_rows_per_s": 4000.0},  # a document from before --bridges
        {
            "bridge_rows_per_s": 4000.0,
            "bridge_steps_us_per_event": bridge_steps_per_event(STEP_SECONDS, 1000, 4000.0),
        },
        {  # a full run's rows: the hops, the targets and the baseline beside the bridge
            "bridge_rows_per_s": 4000.0,
            "baseline_rows_per_s": 200.0,
            "bridge_vs_baseline_rows_per_s": 20.0,
            "commit_to_kafka_hops": HOPS_DOC,
            "targets": check_targets({"bridge_rows_per_s": 4000.0}),
        },
    ],
)
def test_plot_draws_the_bridge_figures_with_the_throughput_steps(
    bridge_figures: dict[str, Any], tmp_path: Path
) -> None:
    step = {"offered_rows_per_s": 2000.0, "commit_rows_per_s": 1990.0, "kept_up": True,
            "latency_ms": {"p99": 120.0}}  # fmt: skip
    doc = {
        "bench": {"profile": "quick", "started_at": "2025-01-01T00:00:00"},
        "machine": {"cpu_count": 2},
        "throughput_steps": [step],
        "max_sustained_rows_per_s": 1990.0,
        **bridge_figures,
    }
    plot_bench(doc, {}, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _ExitedBridge:
    """Stands in for a started BridgeProcess that has already exited."""

    def __init__(self, code: int, summary: dict[str, Any]) -> None:
        self.code, self._summary = code, summary

    def exit_code(self) -> int | None:
        return self.code

    def failure(self, what: str) -> BenchError:
        return BenchError(f"bridge {what} (exit code {self.code})")

    def summary(self) -> dict[str, Any]:
        return self._summary


def test_waiting_for_bridges_returns_every_summary_in_order_or_the_first_failure() -> None:
    console = Console(record=True)
    bridges = [_ExitedBridge(0, {"events": 1200}), _ExitedBridge(0, {"events": 800})]
    summaries = wait_all_exit(bridges, console, 5.0, "2 bridges draining")  # type: ignore[arg-type]
    assert summaries == [{"events": 1200}, {"events": 800}]
    failing = [bridges[0], _ExitedBridge(1, {})]
    with pytest.raises(BenchError, match=r"failed \(exit code 1\)"):
        wait_all_exit(failing, console, 5.0, "2 bridges draining")  # type: ignore[arg-type]


def test_bridge_summaries_add_up_key_by_key() -> None:
    summaries = [
        {"events": 1200, "predicted": 1200, "output": "x"},
        {"events": 800, "predicted": 799},
    ]
    assert _add_up(summaries) == {"events": 2000, "predicted": 1999}


def test_bridge_summaries_add_up_their_step_seconds_step_by_step() -> None:
    summaries = [
        {"events": 1200, "step_seconds": {"decode": 0.5, "model_call": 1.0}},
        {"events": 800, "step_seconds": {"decode": 0.25, "model_call": 2.0, "other": 0.125}},
        {"events": 0},  # a bridge that got no partition (or from before step timing)
    ]
    assert _add_up(summaries) == {
        "events": 2000,
        "step_seconds": {"decode": 0.75, "model_call": 3.0, "other": 0.125},
    }


class _FakeBench:
    """Stands in for Bench: records the bridge-only rounds asked for."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self.rounds: list[tuple[int, bool, bool]] = []

    def prefill_change_topic(self) -> str:
        return "prefill"

    def bridge_only_run(
        self, prefill: str, processes: int, wait_for_sink: bool, explain: bool = False
    ) -> dict[str, Any]:
        self.rounds.append((processes, wait_for_sink, explain))
        rate = 100.0 if explain else 1000.0 * processes
        return {
            "bridge_processes": processes, "explain": explain, "bridge_rows_per_s": rate,
            "bridge_steps_us_per_event": {"round": (processes, explain)},
        }  # fmt: skip

    def baseline_run(self, prefill: str) -> dict[str, Any]:
        self.rounds.append((0, False, False))
        return {"baseline_rows_per_s": 80.0}


def test_the_baseline_drains_after_the_bridges_and_gives_the_ratio() -> None:
    bench = _FakeBench(BenchOptions(bridges=1, run_explain=False))
    doc: dict[str, Any] = {}
    _bridge_only_runs(bench, doc)  # type: ignore[arg-type]
    # The sink catches up before the baseline too, so it does not share the CPU with it.
    assert bench.rounds == [(1, True, False), (0, False, False)]
    assert doc["baseline_rows_per_s"] == 80.0
    assert doc["bridge_vs_baseline_rows_per_s"] == 12.5
    # The quick profile leaves the baseline out (it is the full profile's).
    quick = _FakeBench(replace(BenchOptions.quick(), run_explain=False))
    quick_doc: dict[str, Any] = {}
    _bridge_only_runs(quick, quick_doc)  # type: ignore[arg-type]
    assert quick.rounds == [(1, True, False), (2, False, False)]
    assert "baseline_rows_per_s" not in quick_doc


def test_bridge_only_rounds_record_one_process_under_the_old_key_and_all_by_count() -> None:
    bench = _FakeBench(BenchOptions(bridges=3, run_explain=False, run_baseline=False))
    doc: dict[str, Any] = {}
    _bridge_only_runs(bench, doc)  # type: ignore[arg-type]
    # The sink catches up between rounds, not after the last.
    assert bench.rounds == [(1, True, False), (3, False, False)]
    assert doc["bridge_rows_per_s"] == 1000.0
    assert doc["bridge_run"]["bridge_processes"] == 1
    assert doc["bridge_rows_per_s_by_processes"] == {"1": 1000.0, "3": 3000.0}
    assert set(doc["bridge_run_by_processes"]) == {"1", "3"}
    assert doc["bridge_steps_us_per_event"] == {"round": (1, False)}
    assert "bridge_explained_rows_per_s" not in doc

    bench, doc = _FakeBench(BenchOptions(bridges=1, run_explain=False, run_baseline=False)), {}
    _bridge_only_runs(bench, doc)  # type: ignore[arg-type]
    assert bench.rounds == [(1, False, False)]
    assert doc["bridge_rows_per_s_by_processes"] == {"1": 1000.0}


def test_the_explained_bridge_round_comes_last_and_has_figures_of_its_own() -> None:
    bench, doc = _FakeBench(BenchOptions(bridges=2, run_baseline=False)), {}
    _bridge_only_runs(bench, doc)  # type: ignore[arg-type]
    # The plain rounds keep their keys; the sink catches up before the explained round.
    assert bench.rounds == [(1, True, False), (2, True, False), (1, False, True)]
    assert doc["bridge_rows_per_s"] == 1000.0
    assert doc["bridge_rows_per_s_by_processes"] == {"1": 1000.0, "2": 2000.0}
    assert doc["bridge_explained_rows_per_s"] == 100.0
    assert doc["bridge_run_explained"]["explain"] is True
    # The cost per step at top level is the plain one-bridge round's, not the explained one's.
    assert doc["bridge_steps_us_per_event"] == {"round": (1, False)}
    assert doc["bridge_run_explained"]["bridge_steps_us_per_event"] == {"round": (1, True)}


def test_explained_figures_are_on_by_default_smaller_in_quick_and_checked() -> None:
    full, quick = BenchOptions(), BenchOptions.quick()
    assert full.run_explain and quick.run_explain
    assert (full.explained_requests, full.explained_rows) == (10, 5_000)
    assert (quick.explained_requests, quick.explained_rows) == (3, 500)
    # A part of the pre-fill, never more than it.
    assert BenchOptions(prefill_rows=300, explained_bridge_rows=5_000).explained_rows == 300
    with pytest.raises(BenchError, match="--explained-rows must be at least 1, got 0"):
        BenchOptions(explained_bridge_rows=0).check()


def test_bench_cli_skips_the_explained_figures_or_sets_their_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, seen = _bench_cli(monkeypatch, "--quick", "--skip-explain")
    assert result.exit_code == 0, result.output
    assert seen[0].run_explain is False
    result, seen = _bench_cli(monkeypatch, "--explained-rows", "2000")
    assert result.exit_code == 0, result.output
    assert (seen[0].run_explain, seen[0].explained_bridge_rows) == (True, 2_000)


class _RecordingClient:
    """Stands in for the serving run's HttpClient: records every POST."""

    posts: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, base_url: str) -> None:
        pass

    def post(self, path: str, body: bytes, rows: int) -> None:
        self.posts.append((path, json.loads(body)))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("run_explain", [True, False])
def test_serving_run_times_the_same_500_records_with_and_without_explanations(
    monkeypatch: pytest.MonkeyPatch, run_explain: bool
) -> None:
    from streaming_ml.bench import serving

    _RecordingClient.posts = []
    monkeypatch.setattr(serving, "HttpClient", _RecordingClient)
    monkeypatch.setattr(serving, "_concurrent", lambda *_args: {})
    options = BenchOptions(
        one_row_requests=1, thousand_row_requests=2, explained_requests=4, run_explain=run_explain
    )
    seeds = iter(range(100, 200))
    result = serving.serving_run(Settings(), options, Console(quiet=True), lambda: next(seeds))

    batches = [body for path, body in _RecordingClient.posts if path == "/predict_batch"]
    plain = [body for body in batches if "explain" not in body]
    explained = [body for body in batches if body.get("explain") is True]
    assert len(plain) == 3 + 2  # warm-up, then the timed requests
    assert result["predict_batch_500_records_ms"]["count"] == 2
    if run_explain:
        assert len(explained) == 1 + 4
        assert all(body["records"] == plain[0]["records"] for body in explained)
        assert len(explained[0]["records"]) == 500
        assert result["predict_batch_500_records_explained_ms"]["count"] == 4
    else:
        assert explained == []
        assert "predict_batch_500_records_explained_ms" not in result


def test_summary_shows_what_explanations_cost_next_to_the_plain_figures() -> None:
    doc: dict[str, Any] = {
        "predict_batch_500_records_ms_p50": 10.0,
        "predict_batch_500_records_explained_ms_p50": 3000.0,
        "bridge_rows_per_s": 8000.0,
        "bridge_explained_rows_per_s": 160.0,
    }
    assert explanation_rows(doc) == [
        ("predict_batch_500_records_ms_p50", "10.0"),
        ("predict_batch_500_records_explained_ms_p50 (300x)", "3,000.0"),
        ("bridge_explained_rows_per_s (0.02x of off)", "160.0"),
    ]
    # Not measured (--skip-explain, or a document from before): no rows at all.
    assert explanation_rows({"predict_batch_500_records_ms_p50": 10.0}) == []
    doc["targets"] = check_targets({**doc, "bench": {"profile": "full"}})
    console = Console(record=True, width=200)
    print_summary({**doc, "bench": {"profile": "full"}}, console)
    assert "bridge_explained_rows_per_s (0.02x of off)" in console.export_text()


def test_bridge_step_rows_give_each_step_then_the_total_and_the_wall_time() -> None:
    steps = bridge_steps_per_event(STEP_SECONDS, 1000, rows_per_s=4000.0)
    assert steps is not None
    rows = bridge_step_rows(steps)
    assert rows[:2] == [("collect", "2.0", "4.0 %"), ("decode", "12.5", "25.0 %")]
    assert [step for step, _, _ in rows[2:7]] == [
        "plan", "model_call", "encode", "produce_commit", "other",
    ]  # fmt: skip
    assert rows[7:] == [("total", "50.0", "100.0 %"), ("wall time of the drain", "250.0", "—")]
    del steps["wall_us_per_event"]
    assert bridge_step_rows(steps)[-1] == ("total", "50.0", "100.0 %")


@pytest.mark.parametrize("steps", [None, "absent"])
def test_summary_prints_the_bridge_steps_table_only_when_measured(steps: Any) -> None:
    doc: dict[str, Any] = {"bench": {"profile": "quick"}, "bridge_rows_per_s": 4000.0}
    doc["targets"] = check_targets(doc)
    if steps != "absent":
        doc["bridge_steps_us_per_event"] = steps
    console = Console(record=True, width=200)
    print_summary(doc, console)
    assert "bridge cost per event" not in console.export_text()

    doc["bridge_steps_us_per_event"] = bridge_steps_per_event(STEP_SECONDS, 1000, 4000.0)
    console = Console(record=True, width=200)
    print_summary(doc, console)
    lines = console.export_text().splitlines()
    assert any("bridge cost per event (1 bridge, 1,000 events)" in line for line in lines)
    model_call = next(line for line in lines if "model_call" in line)
    assert "25.0" in model_call and "50.0 %" in model_call
    assert "250.0" in next(line for line in lines if "wall time of the drain" in line)
