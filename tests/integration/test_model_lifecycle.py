"""Models that change while the stream runs, on the real stack: promotion mid-stream,
refused models, sticky A/B, shadow, a replica with an empty store and rollback.

Each test gets registry topics of its own (the stack is shared by the session), and
its services follow that registry the way `streaming-ml serve` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import requests

from streaming_ml.config import Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.errors import RegistryError
from streaming_ml.models import lifecycle, registry
from streaming_ml.models.loader import load_price_model
from streaming_ml.schema.listing import FEATURES
from streaming_ml.service.launcher import ServiceProcess
from tests.fixtures.model import corrupt_copy, crafted_online_export
from tests.integration.following import (
    champion_is,
    experiment_running,
    following_service,
    model_info,
    own_registry,
)
from tests.integration.pipeline import (
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    predictions_for,
    query,
    read_topic,
    running_bridge,
    settings_env,
    settled,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration


def service_metric(service: ServiceProcess, name: str, **labels: str) -> float:
    """Sum of a metric's samples on the service's /metrics whose labels include ``labels``."""
    total = 0.0
    for line in requests.get(f"{service.url}/metrics", timeout=10).text.splitlines():
        if not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def local_prices(tag: str, rows: list[dict[str, Any]]) -> list[float]:
    model = load_price_model(tag)
    return [float(p) for p in model.predict_records([{f: r[f] for f in FEATURES} for r in rows])]


def test_promotion_mid_stream_switches_every_partition_once_and_loses_nothing(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    old, new = trained_model_tag, second_model_tag
    registry_settings = own_registry(stack_settings)
    with following_service(registry_settings, old, tmp_path / "service.log") as service:
        wait_until(lambda: champion_is(service, old), 30, "the first model claimed as champion")
        settings = pipeline_settings(registry_settings, service.url)
        dsn = dsn_of(settings)
        inserted: list[int] = []
        with running_bridge(settings) as bridge:
            loader = threading.Thread(
                target=lambda: inserted.extend(
                    load_listings(dsn, 15_000, seed=301, rate=500, batch=10,
                                  table=settings.listings_table).ids
                )
            )  # fmt: skip
            loader.start()
            wait_until(lambda: bridge.bridge.stats.predicted >= 5000, 120, "5,000 listings priced")
            lifecycle.promote(settings, new, force=True)
            wait_until(lambda: champion_is(service, new), 10, "the promoted model served")
            loader.join(timeout=120)
            assert not loader.is_alive() and len(set(inserted)) == 15_000
            predictions = wait_until(
                lambda: settled(dsn, settings, inserted), 180, "every listing priced",
                explain=lambda: where_stuck(settings, dsn, inserted),
            )  # fmt: skip
            assert bridge.bridge.stats.dlq == 0
        failed = service_metric(service, "bentoml_service_request_total", endpoint="/predict_batch")
        ok = service_metric(
            service, "bentoml_service_request_total", endpoint="/predict_batch",
            http_response_code="200",
        )  # fmt: skip
        assert failed == ok > 0, "a /predict_batch request failed during the swap"
        # Per-arm metrics: every row counted once, under the model that priced it.
        rows_by_tag = {
            tag: service_metric(
                service, "sml_service_arm_rows_total", arm="champion", model_tag=tag
            )
            for tag in (old, new)
        }
        assert service_metric(service, "sml_service_arm_errors_total") == 0

    tags = Counter(p["model_tag"] for p in predictions.values())
    assert set(tags) == {old, new} and tags[old] >= 5000, tags
    # (At least: a batch retried after a timeout is priced twice; its first answer unused.)
    assert rows_by_tag[old] >= tags[old] and rows_by_tag[new] >= tags[new], rows_by_tag
    # Each listing's price is exactly what the model named on its row says.
    rows = listings(dsn, settings.listings_table, inserted)
    for tag in (old, new):
        ids = sorted(i for i, p in predictions.items() if p["model_tag"] == tag)
        assert [predictions[i]["predicted_price"] for i in ids] == local_prices(
            tag, [rows[i] for i in ids]
        )
    # Per partition of the predictions topic: the old tag, then the new one, never back.
    sequences: dict[int, list[str]] = defaultdict(list)
    ours = set(inserted)
    for record in read_topic(settings, settings.predictions_topic):
        if record.value is not None and record.key["listing_id"] in ours:
            sequences[record.partition].append(record.value["model_tag"])
    assert sum(len(s) for s in sequences.values()) == 15_000
    for partition, sequence in sequences.items():
        switch = sequence.index(new) if new in sequence else len(sequence)
        assert set(sequence[:switch]) <= {old}, partition
        assert set(sequence[switch:]) <= {new}, f"partition {partition} went back to {old}"


def test_corrupt_and_mismatched_models_are_refused_and_the_champion_keeps_serving(
    stack_settings: Settings, trained_model_tag: str, tmp_path: Path
) -> None:
    settings = own_registry(stack_settings)
    corrupt = corrupt_copy(trained_model_tag)
    mismatched = corrupt_copy(trained_model_tag, inputs=["year", "mileage"])
    log = tmp_path / "service.log"
    with following_service(settings, trained_model_tag, log) as service:
        wait_until(lambda: champion_is(service, trained_model_tag), 30, "the champion claimed")
        # The CLI refuses a schema mismatch even with --force...
        with pytest.raises(RegistryError, match=r"refused: .*\['year', 'mileage'\]"):
            lifecycle.promote(settings, mismatched, force=True)
        # ...but another client can still write the events: the service refuses too.
        for tag in (corrupt, mismatched):
            registry.publish(settings, tag)
            registry.append_event(settings, registry.ModelEvent(kind="promoted", tag=tag))

        def refused() -> dict[str, str]:
            found = model_info(service)["registry"]["refused"]
            return {r["tag"]: r["reason"] for r in found} if len(found) == 2 else {}

        reasons = wait_until(refused, 30, "both models refused")
        assert "cannot load" in reasons[corrupt]
        assert "inputs" in reasons[mismatched] and "'year', 'mileage'" in reasons[mismatched]
        info = model_info(service)
        assert info["tag"] == trained_model_tag
        answer = requests.post(
            f"{service.url}/predict_batch", json={"records": [EXAMPLE_RECORD]}, timeout=10
        ).json()
        assert answer[0]["model_tag"] == trained_model_tag
        assert service_metric(service, "sml_service_model_refusals_total") == 2
    text = log.read_text(errors="replace")
    assert text.count("model refused") == 2 and corrupt in text and mismatched in text


def test_a_model_not_signed_with_the_registry_key_is_refused_before_it_is_unpickled(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    from streaming_ml.models import signing

    settings = own_registry(stack_settings)
    empty_store = tmp_path / "bentoml-home"
    empty_store.mkdir()
    registry.publish(settings, trained_model_tag)
    registry.append_event(settings, registry.ModelEvent(kind="promoted", tag=trained_model_tag))
    marker = tmp_path / "payload-ran"
    unsigned, unsigned_bytes = crafted_online_export(trained_model_tag, "crafted_a", marker)
    forged, forged_bytes = crafted_online_export(trained_model_tag, "crafted_b", marker)
    log = tmp_path / "service.log"
    # An empty store: every model this replica serves comes from the topic.
    with following_service(settings, trained_model_tag, log, bentoml_home=empty_store) as service:
        assert champion_is(service, trained_model_tag)  # a signed model loads
        # Written straight to the topics, as anyone who can reach Kafka could.
        writer = registry.RegistryWriter(settings)
        writer.write(settings.models_topic, unsigned.encode(), unsigned_bytes)
        signed_elsewhere = signing.sign(b"an attacker's own key, 32+ bytes", forged, forged_bytes)
        writer.write(settings.models_topic, forged.encode(), signed_elsewhere)
        for tag in (unsigned, forged):
            registry.append_event(settings, registry.ModelEvent(kind="promoted", tag=tag))

        def refused() -> dict[str, str]:
            found = model_info(service)["registry"]["refused"]
            return {r["tag"]: r["reason"] for r in found} if len(found) == 2 else {}

        reasons = wait_until(refused, 30, "both crafted models refused")
        assert reasons[unsigned].startswith("untrusted: ") and "is not signed" in reasons[unsigned]
        assert "signature does not match" in reasons[forged]
        assert model_info(service)["tag"] == trained_model_tag
        assert service_metric(service, "sml_service_model_refusals_total", cause="untrusted") == 2
        answer = requests.post(
            f"{service.url}/predict_batch", json={"records": [EXAMPLE_RECORD]}, timeout=10
        ).json()
        assert answer[0]["model_tag"] == trained_model_tag
        # A model published with the key is still taken after the refusals.
        registry.publish(settings, second_model_tag)
        registry.append_event(settings, registry.ModelEvent(kind="promoted", tag=second_model_tag))
        wait_until(lambda: champion_is(service, second_model_tag), 30, "the signed model served")
    assert not marker.exists(), "a crafted pickle ran in the service"
    lines = [
        line for line in log.read_text(errors="replace").splitlines() if "model refused" in line
    ]
    assert len(lines) == 2
    assert any(unsigned in line and "is not signed" in line for line in lines), lines
    assert any(forged in line and "signature does not match" in line for line in lines), lines
    stored = {p.parent.name + ":" + p.name for p in (empty_store / "models").glob("*/*")}
    assert unsigned not in stored and forged not in stored


EXAMPLE_RECORD = {
    "model": "Focus", "year": 2018, "transmission": "Manual", "mileage": 20000,
    "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": 1.0,
}  # fmt: skip


def arms_of(dsn: str, settings: Settings, ids: list[int]) -> dict[int, tuple[str, str]]:
    rows = predictions_for(dsn, settings.predictions_table, ids)
    return {i: (r["arm"], r["model_tag"]) for i, r in rows.items()}


def test_ab_split_holds_its_share_and_every_update_stays_on_its_arm(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    experiment = {"challenger": second_model_tag, "split_percent": 20.0}
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as settings:
        dsn = dsn_of(settings)
        source = settings.listings_table
        with running_bridge(settings):
            ids = load_listings(dsn, 5000, seed=311, batch=500, table=source).ids
            wait_until(lambda: settled(dsn, settings, ids), 180, "5,000 listings priced",
                       explain=lambda: where_stuck(settings, dsn, ids))  # fmt: skip
            first = arms_of(dsn, settings, ids)
            updated = ids[::5]
            execute(dsn, f"UPDATE public.{source} SET mileage = mileage + 1000 WHERE id = ANY(%s)",
                    (updated,))  # fmt: skip
            wait_until(lambda: settled(dsn, settings, ids), 180, "every update re-priced",
                       explain=lambda: where_stuck(settings, dsn, ids))  # fmt: skip
            second = arms_of(dsn, settings, ids)
    share = sum(arm == "challenger" for arm, _ in first.values()) / len(ids)
    assert 0.17 <= share <= 0.23, share
    assert {first[i] for i in ids} == {
        ("champion", trained_model_tag),
        ("challenger", second_model_tag),
    }
    assert second == first, "an update moved a listing to the other arm"


def test_shadow_prices_every_listing_once_and_never_touches_the_served_price(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    experiment = {"shadow": second_model_tag}
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as settings:
        dsn = dsn_of(settings)
        source = settings.listings_table
        with running_bridge(settings):
            ids = load_listings(dsn, 500, seed=321, batch=50, table=source).ids
            gone = ids[:10]
            execute(dsn, f"DELETE FROM public.{source} WHERE id = ANY(%s)", (gone,))
            live = ids[10:]

            def shadow_rows() -> dict[int, dict[str, Any]]:
                rows = predictions_for(dsn, settings.shadow_table, ids)
                return rows if set(rows) == set(live) else {}

            wait_until(lambda: settled(dsn, settings, ids), 120, "every listing priced",
                       explain=lambda: where_stuck(settings, dsn, ids))  # fmt: skip
            shadows = wait_until(shadow_rows, 60, "one shadow row per live listing")
    served = predictions_for(dsn, settings.predictions_table, ids)
    rows = listings(dsn, source, live)
    ordered = [rows[i] for i in live]
    # Served: the champion's price, exactly as without a shadow.
    assert [served[i]["predicted_price"] for i in live] == local_prices(trained_model_tag, ordered)
    assert {(served[i]["arm"], served[i]["model_tag"]) for i in live} == {
        ("champion", trained_model_tag)
    }
    assert [shadows[i]["predicted_price"] for i in live] == local_prices(second_model_tag, ordered)
    assert {(shadows[i]["arm"], shadows[i]["model_tag"]) for i in live} == {
        ("shadow", second_model_tag)
    }
    count = query(
        dsn,
        "SELECT count(*) AS n, count(DISTINCT listing_id) AS d "
        f"FROM public.{settings.shadow_table} WHERE listing_id = ANY(%s)",
        (ids,),
    )[0]
    assert (count["n"], count["d"]) == (len(live), len(live))


def test_replica_with_an_empty_store_serves_the_champion_and_rollback_reaches_all(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    settings = own_registry(stack_settings)
    empty_store = tmp_path / "bentoml-home"
    empty_store.mkdir()
    with following_service(settings, trained_model_tag, tmp_path / "one.log") as first:
        wait_until(lambda: champion_is(first, trained_model_tag), 30, "the champion claimed")
        lifecycle.promote(settings, second_model_tag, force=True)
        wait_until(lambda: champion_is(first, second_model_tag), 10, "the promotion served")
        # What `model list` and `model describe` show now.
        rows, _aliases, problem = lifecycle.model_rows(settings)
        by_tag = {row.summary.tag: row for row in rows}
        assert problem is None
        assert by_tag[second_model_tag].aliases == ["champion"]
        assert by_tag[trained_model_tag].aliases == ["previous"]
        assert by_tag[second_model_tag].published and by_tag[second_model_tag].local
        described = json.loads(
            subprocess.run(
                [sys.executable, "-m", "streaming_ml.cli", "model", "describe", second_model_tag,
                 "--json"],
                env=settings_env(settings), capture_output=True, text=True, check=True,
                timeout=120,
            ).stdout
        )  # fmt: skip
        assert described["aliases"] == ["champion"]
        assert [e["kind"] for e in described["events"]] == ["published", "promoted"]
        assert described["events"][1]["forced"] is True
        assert described["metadata"]["cv"]["folds"] == 5
        with following_service(
            settings, trained_model_tag, tmp_path / "two.log", bentoml_home=empty_store
        ) as second:
            assert champion_is(second, second_model_tag)
            restored, retired = lifecycle.rollback(settings)
            assert (restored, retired) == (trained_model_tag, second_model_tag)
            started = time.monotonic()
            wait_until(
                lambda: champion_is(first, restored) and champion_is(second, restored),
                5,
                "the previous champion back on both replicas",
            )
            assert time.monotonic() - started <= 5
            answer = requests.post(
                f"{second.url}/predict_batch", json={"records": [EXAMPLE_RECORD]}, timeout=10
            ).json()
            assert answer[0]["model_tag"] == restored
    imported = {p.name for p in (empty_store / "models" / "ford_price").iterdir()}
    assert {trained_model_tag.split(":")[1], second_model_tag.split(":")[1]} <= imported
