"""The bridge's step timing: laps charged to their steps, totals summed and exported."""

from __future__ import annotations

from collections import Counter

from streaming_ml.bridge.metrics import STEPS, BridgeMetrics, BridgeStats, StepClock
from tests.fixtures.clock import FakeClock


def test_steps_are_named_in_the_order_a_batch_goes_through_them() -> None:
    assert STEPS == (
        "collect", "decode", "plan", "model_call", "encode", "produce_commit", "other",
    )  # fmt: skip


def test_each_lap_charges_the_time_since_the_previous_one_and_a_second_lap_adds_up() -> None:
    now = FakeClock()
    clock = StepClock(collect_ns=7, now=now)
    now.advance(30)
    clock.lap("decode")
    now.advance(50)
    clock.lap("plan")
    now.advance(5)
    clock.lap("model_call")
    now.advance(15)
    clock.lap("plan")  # settling the plan after the model call
    assert clock.ns == {
        "collect": 7, "decode": 30, "plan": 65, "model_call": 5,
        "encode": 0, "produce_commit": 0, "other": 0,
    }  # fmt: skip


def test_stats_add_up_each_batch_and_summarise_the_steps_in_seconds() -> None:
    stats = BridgeStats()
    first = dict.fromkeys(STEPS, 0) | {"decode": 1_500_000, "model_call": 40_000_000}
    second = dict.fromkeys(STEPS, 0) | {"decode": 2_500_000, "other": 1}
    stats.add_batch(500, Counter(predicted=500), 40.0, 45.0, first)
    stats.add_batch(200, Counter(predicted=200), 0.0, 3.0, second)
    summary = stats.summary()
    assert summary["events"] == 700
    assert list(summary["step_seconds"]) == list(STEPS)
    assert summary["step_seconds"] == {
        "collect": 0.0, "decode": 0.004, "plan": 0.0, "model_call": 0.04,
        "encode": 0.0, "produce_commit": 0.0, "other": 0.0,  # 1 ns rounds away
    }  # fmt: skip


def test_step_seconds_are_exported_per_step_from_the_start() -> None:
    metrics = BridgeMetrics()

    def seconds(step: str) -> float | None:
        return metrics.registry.get_sample_value("sml_bridge_step_seconds_total", {"step": step})

    assert [seconds(step) for step in STEPS] == [0.0] * len(STEPS)
    metrics.add_step_times(dict.fromkeys(STEPS, 0) | {"encode": 250_000_000})
    metrics.add_step_times(dict.fromkeys(STEPS, 0) | {"encode": 250_000_000})
    assert seconds("encode") == 0.5
    assert seconds("decode") == 0.0
