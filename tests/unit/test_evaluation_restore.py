"""The evaluator's restore: snapshots of the running metrics and state survive the
changelog's JSON, a restored scoreboard continues exactly as the one that kept running,
and a batch commits no offset of a partition it did not handle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from river import drift

from streaming_ml.config import Settings
from streaming_ml.evaluation import outcomes as joins
from streaming_ml.evaluation.accuracy import PageHinkley, Scoreboard
from streaming_ml.evaluation.evaluator import owned_positions
from streaming_ml.evaluation.state import decode_states, new_partition
from streaming_ml.kafka.offsets import offsets_to_commit
from streaming_ml.schema.outcome import Outcome

PAIRS = (("m:1", "champion"), ("m:2", "challenger"), ("m:1", "shadow"))


def generated(count: int, seed: int, start_ms: int = 0) -> list[tuple[Outcome, int]]:
    """Outcomes over three partitions and three pairs, a second apart, some with a
    shifted error so the detectors fire."""
    rng = np.random.default_rng(seed)
    found = []
    for i in range(count):
        tag, arm = PAIRS[i % len(PAIRS)]
        actual = float(rng.uniform(2_000, 40_000))
        error = float(rng.normal(0 if i < count // 2 else 3_000, 900))
        ts = start_ms + i * 1_000
        found.append(
            (
                Outcome(
                    listing_id=i, model_tag=tag, arm=arm, actual_price=actual,
                    predicted_price=max(1.0, actual + error), priced_ts_ms=ts - 500,
                    labelled_ts_ms=ts, evaluated_ts_ms=ts,
                ),
                int(rng.integers(0, 3)),
            )
        )  # fmt: skip
    return found


def board() -> Scoreboard:
    return Scoreboard(window_outcomes=50, window_minutes=2.0, threshold=5.0)


def through_json(board: Scoreboard, partitions: list[int]) -> Scoreboard:
    again = Scoreboard(board.window_outcomes, board.window_ms / 60_000, board.threshold)
    for partition in partitions:
        again.restore_partition(
            partition, json.loads(json.dumps(board.partition_record(partition)))
        )
    return again


def test_our_page_hinkley_fires_exactly_when_rivers_does() -> None:
    rng = np.random.default_rng(4)
    ours = PageHinkley(100, 0.015, 10.0)
    theirs = drift.PageHinkley(
        min_instances=100, delta=0.015, threshold=10.0, alpha=ours.alpha, mode="both"
    )
    values = np.concatenate([rng.normal(0, 0.15, 3_000), rng.normal(0.2, 0.15, 1_000)] * 2)
    fired = []
    for i, x in enumerate(values):
        ours.update(float(x))
        theirs.update(float(x))
        assert ours.drift_detected == theirs.drift_detected, i
        fired.append(ours.drift_detected)
    assert sum(fired) >= 2


def test_a_long_normal_stream_raises_no_model_degraded_alarm() -> None:
    # Heavy-tailed noise at the spread of the test model's log errors (0.15). With River's
    # default forgetting factor (1 - 0.0001) each of these streams alarmed after 15,000 to
    # 25,000 outcomes: the forgetting keeps the sums' spread as wide as the threshold.
    for seed in range(5):
        rng = np.random.default_rng(seed)
        noise = np.clip(rng.standard_t(4, 30_000) * 0.15 / np.sqrt(2), -1.0, 1.0)
        detector = PageHinkley(100, 0.015, 10.0)
        for i, x in enumerate(noise):
            detector.update(float(x))
            assert not detector.drift_detected, (seed, i)


def test_a_detector_saved_with_another_forgetting_factor_starts_again() -> None:
    # An evaluator upgraded from River's default factor restores state it cannot continue:
    # one such restored state, which had not fired, fired 159 outcomes later.
    old = PageHinkley(100, 0.015, 10.0, alpha=1 - 0.0001)
    for x in np.random.default_rng(6).normal(0, 0.15, 5_000):
        old.update(float(x))
    saved = old.to_json()
    restored = PageHinkley(100, 0.015, 10.0)
    restored.restore({key: value for key, value in saved.items() if key != "alpha"})
    assert restored == PageHinkley(100, 0.015, 10.0)
    restored.restore(saved)
    assert restored == PageHinkley(100, 0.015, 10.0)
    same = PageHinkley(100, 0.015, 10.0, alpha=old.alpha)
    same.restore(saved)
    assert same == old


def test_a_restored_scoreboard_equals_and_continues_as_the_one_that_kept_running() -> None:
    first, later = generated(3_000, seed=1), generated(3_000, seed=2, start_ms=3_000_000)
    running = board()
    running.add_all(first)
    restored = through_json(running, [0, 1, 2])
    now = first[-1][0].evaluated_ts_ms
    assert restored.snapshot(now) == running.snapshot(now)
    kept = [running.add(o, p) for o, p in later]
    again = [restored.add(o, p) for o, p in later]
    assert [d for d in kept if d] == [d for d in again if d]
    assert any(kept), "no detection to compare"
    now = later[-1][0].evaluated_ts_ms
    assert restored.snapshot(now) == running.snapshot(now)


def test_metrics_merged_over_partitions_are_those_of_all_the_outcomes() -> None:
    outcomes = generated(2_000, seed=3)
    split, whole = board(), board()
    split.add_all(outcomes)
    whole.add_all((o, 0) for o, _p in outcomes)
    now = outcomes[-1][0].evaluated_ts_ms
    merged, together = split.snapshot(now), whole.snapshot(now)
    for pair in together:
        for window in ("cumulative", "last_n", "last_t"):
            assert merged[pair][window] == pytest.approx(together[pair][window], rel=1e-9)
        assert merged[pair]["label_lag_s"] == together[pair]["label_lag_s"]
    # The last T minutes: two minutes of outcomes a second apart, a third of them per
    # pair, give or take the bucket at the window's edge.
    n = together["m:1|champion"]["last_t"]["n"]
    assert 40 <= n <= 42


def test_partition_state_and_metrics_survive_the_changelog() -> None:
    settings = Settings()
    scores = board()
    outcomes = generated(600, seed=5)
    scores.add_all(outcomes)
    states = {n: new_partition(settings, n) for n in (0, 1, 2)}
    for n, state in states.items():
        joins.on_row(10 + n, state.listing(10 + n), {"price": None}, 1, 1)
        state.labelled.update({"m:1|champion": n + 1})
        state.deleted.add(99)
        state.changed = True
    latest: dict[tuple[int, bytes], bytes | None] = {}
    for state in states.values():
        for record in state.changelog("changelog", scores):
            assert record.partition is not None
            latest[(record.partition, record.key or b"")] = record.value
    restored = board()
    again = decode_states(settings, latest, [0, 1, 2], restored)
    now = outcomes[-1][0].evaluated_ts_ms
    assert restored.snapshot(now) == scores.snapshot(now)
    for n, state in again.items():
        assert state.labelled == states[n].labelled
        assert state.listings == states[n].listings
        assert 99 not in state.listings


def test_a_batch_commits_no_offset_of_a_partition_revoked_while_it_was_in_flight() -> None:
    batch = [("changes", 0, 10), ("changes", 1, 20), ("predictions", 1, 5), ("changes", 0, 11)]
    handled = owned_positions(batch, {0})
    assert [(tp.topic, tp.partition, tp.offset) for tp in offsets_to_commit(handled)] == [
        ("changes", 0, 12)
    ]
    assert offsets_to_commit(owned_positions(batch, set())) == []
