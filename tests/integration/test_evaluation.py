"""Online evaluation on the real stack: outcomes, running accuracy, coverage, drift and
degradation alerts, a SIGKILL of the evaluator, and the outcomes table the sink writes.

Each test gets its own evaluator group, changelog, outcomes and alerts topics (and, when
it reads the table, its own outcomes table and sink connector), so tests sharing the
session's stack do not see each other's outcomes.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.connect import client
from streaming_ml.datasets.load import load_listings
from streaming_ml.evaluation import monitor
from streaming_ml.evaluation.evaluator import Evaluator
from streaming_ml.evaluation.outcomes import pair_key
from streaming_ml.kafka import replay
from streaming_ml.kafka import topics as topics_mod
from streaming_ml.models import lifecycle
from streaming_ml.schema.listing import feature_problems
from streaming_ml.stack import postgres
from streaming_ml.stack.secrets import load_passwords
from tests.fixtures.ports import free_port
from tests.integration.following import experiment_running, own_registry
from tests.integration.pipeline import (
    commit_offsets,
    dsn_of,
    high_watermarks,
    in_thread,
    listings,
    pipeline_settings,
    query,
    running_bridge,
    settings_env,
    settled,
    unique,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration


def evaluation_settings(stack_settings: Settings, service_url: str, **update: Any) -> Settings:
    """A bridge group and an evaluator of this test's own (topics, group, metrics port)."""
    return pipeline_settings(
        stack_settings,
        service_url,
        evaluator_group=unique("test-evaluator"),
        evaluator_state_topic=unique("sml_evaluator_state"),
        evaluator_metrics_port=free_port(),
        outcomes_topic=unique("car_price_outcomes"),
        alerts_topic=unique("car_price_alerts"),
        **update,
    )


def with_outcomes_table(settings: Settings) -> Settings:
    """Give ``settings`` an outcomes table and a sink connector of their own."""
    name = unique("outcomes").replace("-", "_")
    own = settings.model_copy(
        update={"outcomes_table": name, "outcomes_sink_connector": f"test-{name}-sink"}
    )
    # The schema for these settings: CREATE ... IF NOT EXISTS, so only the new table is new.
    text = postgres.schema_sql(own).replace("\\connect cars\n", "")
    passwords = load_passwords(own.state_dir)
    conn = psycopg2.connect(postgres.superuser_dsn(own, passwords, own.database))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(text)
    finally:
        conn.close()
    # Topics before the sink: a sink subscribing first would auto-create one partition.
    topics_mod.ensure_topics(own)
    client.register_connector(own, own.outcomes_sink_connector)
    return own


def evaluator_starts_at_end(settings: Settings) -> None:
    """The evaluator group sees only what the test makes (the bridge's group, too)."""
    from confluent_kafka import Consumer

    inputs = (settings.listings_topic, settings.predictions_topic, settings.shadow_topic)
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "sml-probe"})
    try:
        for topic in inputs:
            ends = high_watermarks(probe, topic)
            if ends is not None:
                commit_offsets(settings, settings.evaluator_group, topic, ends)
    finally:
        probe.close()


@contextmanager
def running_evaluator(settings: Settings) -> Iterator[Evaluator]:
    evaluator = Evaluator(settings)
    with in_thread("test-evaluator", evaluator.run, evaluator.assigned, evaluator.stop):
        yield evaluator


def read_outcomes(settings: Settings) -> list[dict[str, Any]]:
    """Every committed outcome record on the settings' outcomes topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer

    from streaming_ml.schema import avro

    decode = avro.writer_schema_deserializer(avro.registry_client(settings.registry_url))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": unique("read-outcomes"),
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    found: list[dict[str, Any]] = []
    try:
        metadata = consumer.list_topics(settings.outcomes_topic, timeout=10)
        start = {p: OFFSET_BEGINNING for p in metadata.topics[settings.outcomes_topic].partitions}
        _count, complete = replay.read_until_end(
            consumer, settings.outcomes_topic, start,
            lambda msg: found.append(decode(msg.value(), None)), 60,
        )  # fmt: skip
    finally:
        consumer.close()
    assert complete, "could not read the outcomes topic to its end"
    return found


def evaluator_samples(settings: Settings, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric on the evaluator's /metrics, with their labels."""
    import re

    import requests

    url = f"http://{settings.host}:{settings.evaluator_metrics_port}/metrics"
    samples = []
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) + 1 :].rpartition("} ")
            samples.append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return samples


def offline_metrics(errors: list[float], actuals: list[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    a = np.asarray(actuals, dtype=float)
    return {
        "mae": float(np.mean(np.abs(e))),
        "rmse": float(math.sqrt(np.mean(e**2))),
        "mape": float(np.mean(np.abs(e) / a)),
        "bias": float(np.mean(e)),
    }


def test_labels_on_insert_give_metrics_equal_to_the_tables_offline(
    stack_settings: Settings, prediction_service: str, trained_model_tag: str
) -> None:
    settings = with_outcomes_table(evaluation_settings(stack_settings, prediction_service))
    dsn = dsn_of(settings)
    evaluator_starts_at_end(settings)
    with running_bridge(settings), running_evaluator(settings) as evaluator:
        ids = load_listings(dsn, 1_200, seed=1001, invalid=30, table=settings.listings_table).ids
        rows_by_id = listings(dsn, settings.listings_table, ids)
        valid = [i for i in ids if not feature_problems(rows_by_id[i])]
        predictions = wait_until(
            lambda: settled(dsn, settings, valid), 120, "every valid listing priced",
            explain=lambda: where_stuck(settings, dsn, valid),
        )  # fmt: skip
        priced = sorted(predictions)
        assert len(priced) == 1_170
        table = settings.outcomes_table
        wait_until(
            lambda: query(dsn, f"SELECT count(*) AS n FROM {table}")[0]["n"] >= len(priced),
            120, "an outcome row per priced listing",
        )  # fmt: skip
        snapshot = evaluator.snapshot()
        pounds = evaluator_samples(settings, "sml_eval_error_pounds")
        ratios = evaluator_samples(settings, "sml_eval_mape_ratio")
        counted = evaluator_samples(settings, "sml_eval_outcomes_total")
        lags = evaluator_samples(settings, "sml_eval_label_lag_seconds_count")
    rows = query(
        dsn,
        f"SELECT p.listing_id, p.predicted_price, l.price FROM {settings.predictions_table} p "
        f"JOIN {settings.listings_table} l ON l.id = p.listing_id WHERE p.listing_id = ANY(%s)",
        (priced,),
    )
    expected = offline_metrics(
        [r["predicted_price"] - r["price"] for r in rows], [r["price"] for r in rows]
    )
    outcome_rows = query(dsn, f"SELECT * FROM {table}")
    assert len(outcome_rows) == len(priced)
    assert sorted(r["listing_id"] for r in outcome_rows) == priced
    assert {r["label_lag_ms"] for r in outcome_rows} == {0}
    pair = snapshot["pairs"][pair_key(trained_model_tag, "champion")]
    assert pair["cumulative"]["n"] == len(priced)
    assert pair["predicted"] == pair["labelled"] == len(priced)
    assert pair["label_coverage"] == 1.0
    for name, value in expected.items():
        assert pair["cumulative"][name] == pytest.approx(value, rel=1e-9, abs=1e-6), name
    # The monitor reads the topics, not the evaluator, and comes to the same figures.
    seen = monitor.snapshot(settings)["pairs"][pair_key(trained_model_tag, "champion")]
    for name, value in expected.items():
        assert seen["cumulative"][name] == pytest.approx(value, rel=1e-9, abs=1e-6), name
    assert seen["label_coverage"] == 1.0
    # And Prometheus gets them too.
    ours = {"model_tag": trained_model_tag, "arm": "champion"}
    exported = {
        labels["statistic"]: value
        for labels, value in pounds
        if labels["window"] == "cumulative" and labels["model_tag"] == trained_model_tag
    }
    exported["mape"] = next(
        value
        for labels, value in ratios
        if labels["window"] == "cumulative" and labels["model_tag"] == trained_model_tag
    )
    assert exported == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert {"mae", "rmse", "bias"} == set(exported) - {"mape"}
    # Counts are counters, and the label lag a histogram: one observation per outcome.
    assert [value for labels, value in counted if labels == ours] == [len(priced)]
    assert [value for labels, value in lags if labels == ours] == [len(priced)]


def start_evaluator_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streaming_ml.cli", "evaluator"],
            cwd=REPO_ROOT, env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_late_labels_give_one_outcome_each_even_across_a_sigkill_of_the_evaluator(
    stack_settings: Settings, prediction_service: str, trained_model_tag: str, tmp_path: Path
) -> None:
    settings = evaluation_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    evaluator_starts_at_end(settings)
    log = tmp_path / "evaluator.log"
    loaded: list[Any] = []
    with running_bridge(settings):
        process = start_evaluator_process(settings, log)
        try:
            loader = threading.Thread(
                target=lambda: loaded.append(
                    load_listings(
                        dsn, 2_000, seed=1002, rate=400, batch=50, table=settings.listings_table,
                        scenario="late-labels", label_delay_s=1.0, label_share=0.75,
                    )
                )
            )  # fmt: skip
            loader.start()
            wait_until(lambda: len(read_outcomes(settings)) >= 300, 120, "300 outcomes")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            process = start_evaluator_process(settings, log)
            loader.join(timeout=180)
            assert not loader.is_alive()
            summary = loaded[0]
            labelled = set(summary.labelled)
            assert 1_300 < len(labelled) < 1_700
            settled_rows = wait_until(
                lambda: settled(dsn, settings, summary.ids), 120, "every listing priced",
                explain=lambda: where_stuck(settings, dsn, summary.ids),
            )  # fmt: skip
            assert len(settled_rows) == 2_000
            outcomes = wait_until(
                lambda: (found := read_outcomes(settings)) and len(found) >= len(labelled)
                and found,
                120, "an outcome for every labelled listing",
            )  # fmt: skip
            snapshot = wait_until(
                lambda: (s := monitor.snapshot(settings))["pairs"]
                and s["pairs"][pair_key(trained_model_tag, "champion")]["predicted"] == 2_000
                and s,
                60, "coverage counts caught up",
            )  # fmt: skip
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    keys = Counter((o["listing_id"], o["model_tag"], o["arm"], o["actual_price"]) for o in outcomes)
    assert max(keys.values()) == 1, "an outcome was emitted twice"
    assert {o["listing_id"] for o in outcomes} == labelled
    listings_by_id = {
        r["id"]: r
        for r in query(
            dsn,
            f"SELECT id, price FROM {settings.listings_table} WHERE id = ANY(%s)",
            (summary.ids,),
        )
    }
    for outcome in outcomes:
        assert outcome["actual_price"] == listings_by_id[outcome["listing_id"]]["price"]
        assert outcome["label_lag_ms"] >= 900, "a late label with no lag"
    assert all(listings_by_id[i]["price"] is None for i in set(summary.ids) - labelled)
    pair = snapshot["pairs"][pair_key(trained_model_tag, "champion")]
    assert pair["cumulative"]["n"] == len(labelled)
    assert pair["labelled"] == len(labelled)
    assert pair["label_coverage"] == pytest.approx(len(labelled) / 2_000)
    assert pair["label_lag_s"]["p50"] >= 0.9
    # `streaming-ml monitor --json` shows the same.
    shown = subprocess.run(
        [sys.executable, "-m", "streaming_ml.cli", "monitor", "--json"],
        cwd=REPO_ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=120,
        check=True,
    ).stdout  # fmt: skip
    assert json.loads(shown)["pairs"][pair_key(trained_model_tag, "champion")]["labelled"] == len(
        labelled
    )
    assert "restored" in log.read_text()


@pytest.fixture(scope="module")
def other_model_tags() -> list[str]:
    """Two more small real models (other seeds and depths): a challenger and a shadow."""
    from streaming_ml.models.train import TrainParams, train_model

    tags = []
    for seed, depth in ((21, 4), (22, 3)):
        result = train_model(
            model_name=Settings().model_name, data_path=None, synthetic_rows=2_000, seed=seed,
            version=None, params=TrainParams(n_estimators=60, learning_rate=0.2, max_depth=depth),
        )  # fmt: skip
        tags.append(str(result["tag"]))
    return tags


def test_challenger_and_shadow_arms_get_metrics_of_their_own(
    stack_settings: Settings, trained_model_tag: str, other_model_tags: list[str], tmp_path: Path
) -> None:
    challenger, shadow = other_model_tags
    experiment = {"challenger": challenger, "split_percent": 30.0, "shadow": shadow}
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as served:
        settings = evaluation_settings(served, str(served.service_url))
        dsn = dsn_of(settings)
        evaluator_starts_at_end(settings)
        with running_bridge(settings), running_evaluator(settings) as evaluator:
            ids = load_listings(dsn, 900, seed=1003, table=settings.listings_table).ids
            wait_until(
                lambda: settled(dsn, settings, ids), 120, "every listing priced",
                explain=lambda: where_stuck(settings, dsn, ids),
            )  # fmt: skip
            wait_until(
                lambda: sum(m.n for m in evaluator.scoreboard.pairs.values()) >= 2 * len(ids),
                120, "an outcome per served and per shadow price",
            )  # fmt: skip
            snapshot = evaluator.snapshot()
    served_rows = query(
        dsn,
        f"SELECT p.model_tag, p.arm, p.predicted_price, l.price FROM {settings.predictions_table}"
        f" p JOIN {settings.listings_table} l ON l.id = p.listing_id WHERE l.id = ANY(%s)",
        (ids,),
    )
    shadow_rows = query(
        dsn,
        f"SELECT p.model_tag, p.arm, p.predicted_price, l.price FROM {settings.shadow_table} p "
        f"JOIN {settings.listings_table} l ON l.id = p.listing_id WHERE l.id = ANY(%s)",
        (ids,),
    )
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for row in served_rows + shadow_rows:
        by_pair.setdefault(pair_key(row["model_tag"], row["arm"]), []).append(row)
    assert set(by_pair) == {
        pair_key(trained_model_tag, "champion"),
        pair_key(challenger, "challenger"),
        pair_key(shadow, "shadow"),
    }
    assert set(snapshot["pairs"]) == set(by_pair)
    assert len(by_pair[pair_key(shadow, "shadow")]) == len(ids)
    for pair, rows in by_pair.items():
        expected = offline_metrics(
            [r["predicted_price"] - r["price"] for r in rows], [r["price"] for r in rows]
        )
        seen = snapshot["pairs"][pair]
        assert seen["cumulative"]["n"] == seen["predicted"] == len(rows), pair
        for name, value in expected.items():
            assert seen["cumulative"][name] == pytest.approx(value, rel=1e-9, abs=1e-6), pair
    # Three different models: three different error levels.
    maes = {pair: snapshot["pairs"][pair]["cumulative"]["mae"] for pair in by_pair}
    assert len({round(v, 2) for v in maes.values()}) == 3


def alerts_of(settings: Settings) -> list[dict[str, Any]]:
    return monitor.snapshot(settings)["alerts"]["recent"]


def test_normal_rows_raise_nothing_and_a_mileage_shift_raises_only_mileage_drift(
    stack_settings: Settings, prediction_service: str, trained_model_tag: str
) -> None:
    # A registry of its own whose champion is the served model: the shared one's champion
    # may be another test's, and a switch of reference mid-window drops the window's rows.
    settings = own_registry(evaluation_settings(stack_settings, prediction_service))
    lifecycle.promote(settings, trained_model_tag, force=True)
    dsn = dsn_of(settings)
    evaluator_starts_at_end(settings)
    with running_bridge(settings), running_evaluator(settings) as evaluator:
        normal = load_listings(dsn, 20_000, seed=1004, table=settings.listings_table).ids
        wait_until(
            lambda: evaluator.coverage()["predicted"].get(
                pair_key(trained_model_tag, "champion"), 0
            ) >= len(normal),
            240, "20,000 normal listings evaluated",
        )  # fmt: skip
        windows = sum(p.features.window for p in evaluator.partitions.values())
        assert windows >= 36, "the drift windows did not close"
        assert evaluator.stats.alerts == 0, alerts_of(settings)
        shifted = load_listings(
            dsn, 6_000, seed=1005, table=settings.listings_table,
            scenario="feature-shift", lead_in=0,
        ).ids  # fmt: skip
        wait_until(
            lambda: evaluator.coverage()["predicted"].get(
                pair_key(trained_model_tag, "champion"), 0
            ) >= len(normal) + len(shifted),
            240, "the shifted listings evaluated",
        )  # fmt: skip
    alerts = alerts_of(settings)
    features = {a["feature"] for a in alerts if a["kind"] == "feature_drift"}
    assert features == {"mileage"}, alerts
    # Every partition alerted, each within a bounded number of its rows: the window the
    # shift began in, plus the alert count of drifted windows.
    partitions = {a["source_partition"] for a in alerts if a["feature"] == "mileage"}
    assert partitions == set(range(settings.partitions))


def test_price_shift_raises_model_degraded_while_the_features_stay_quiet(
    stack_settings: Settings, prediction_service: str, trained_model_tag: str
) -> None:
    settings = evaluation_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    champion = pair_key(trained_model_tag, "champion")
    evaluator_starts_at_end(settings)
    with running_bridge(settings), running_evaluator(settings) as evaluator:

        def evaluated(n: int) -> bool:
            return evaluator.scoreboard.metrics(champion).n >= n

        before = load_listings(dsn, 3_000, seed=1006, table=settings.listings_table).ids
        wait_until(lambda: evaluated(len(before)), 120, "the normal listings evaluated")
        window_before = evaluator.snapshot()["pairs"][champion]["last_n"]
        # 3,000 shifted outcomes per partition: the detector caught the shift in 176 of
        # 200 simulated partitions (scripts/degraded_detector.py), so all three missing
        # it is rare (about 1 in 600).
        after = load_listings(
            dsn, 9_000, seed=1007, table=settings.listings_table,
            scenario="price-shift", lead_in=0,
        ).ids  # fmt: skip
        wait_until(lambda: evaluated(len(before) + len(after)), 180, "the shifted ones evaluated")
        window_after = evaluator.snapshot()["pairs"][champion]["last_n"]
    alerts = alerts_of(settings)
    degraded = [a for a in alerts if a["kind"] == "model_degraded"]
    assert degraded and all(a["model_tag"] == trained_model_tag for a in degraded), alerts
    assert not [a for a in alerts if a["kind"] == "feature_drift"], alerts
    # Kuga and EcoSport are about a fifth of the listings: +20 % on their price moves the
    # windowed MAE up by about 15 % (measured: 1,528 -> 1,756), and the windowed bias down
    # by hundreds of pounds (the model now prices them too low).
    assert window_after["mae"] > 1.08 * window_before["mae"], (window_before, window_after)
    assert window_after["bias"] < window_before["bias"] - 250, (window_before, window_after)
