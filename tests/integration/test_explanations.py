"""Explanations on the real stack: each arm explains with the model that priced the row,
explanations follow a hot swap, `streaming-ml explain` shows what the pipeline wrote, and
with SML_BRIDGE_EXPLAIN every prediction row carries its top contributions.

Each test has registry topics of its own; its service follows them as `streaming-ml
serve` does (tests/integration/following.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from streaming_ml.bridge.plan import explanation_fields
from streaming_ml.config import Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.models import lifecycle
from streaming_ml.models.loader import load_price_model
from streaming_ml.schema import avro
from streaming_ml.schema.fields import EXPLANATION_FIELDS
from streaming_ml.schema.listing import FEATURES
from streaming_ml.service.api import EXAMPLE_LISTING
from tests.fixtures.ports import free_port
from tests.integration.following import (
    champion_is,
    experiment_running,
    following_service,
    own_registry,
)
from tests.integration.pipeline import (
    assert_prices_match_service,
    dsn_of,
    listings,
    pipeline_settings,
    predictions_for,
    read_topic,
    running_bridge,
    settings_env,
    settled,
    unique,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration

PENNY_MILLIONTH = 1e-6  # pounds


def post(url: str, body: dict[str, Any]) -> Any:
    response = requests.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def adds_up(price: float, explanation: dict[str, Any]) -> bool:
    amounts = explanation["contributions"]
    total = explanation["base_price"] + sum(
        amounts.values() if isinstance(amounts, dict) else (c["amount"] for c in amounts)
    )
    return abs(total - price) < PENNY_MILLIONTH


def features(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in FEATURES}


def test_each_arm_and_the_shadow_explain_with_the_model_that_priced_them(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    experiment = {
        "challenger": second_model_tag, "split_percent": 50.0, "shadow": second_model_tag,
    }  # fmt: skip
    models = {tag: load_price_model(tag) for tag in (trained_model_tag, second_model_tag)}
    records = [
        {**record, "listing_id": i}
        for i, record in enumerate(generate_listing_records(200, seed=1510), start=1)
    ]
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as settings:
        url = settings.prediction_url
        answer = post(f"{url}/predict_batch", {"records": records, "explain": True})
        first_of = {item["arm"]: i for i, item in reversed(list(enumerate(answer)))}
        explained = {
            arm: post(
                f"{url}/explain",
                {"listing": features(records[i]), "listing_id": records[i]["listing_id"]},
            )
            for arm, i in first_of.items()
        }

    assert Counter(item["arm"] for item in answer).keys() == {"champion", "challenger"}
    for record, item in zip(records, answer, strict=True):
        model = models[item["model_tag"]]
        assert item["model_tag"] == {"champion": trained_model_tag}.get(
            item["arm"], second_model_tag
        )
        assert item["predicted_price"] == model.predict_records([record])[0]
        assert item["explanation"] == model.explain_records([record]).row(0)
        assert adds_up(item["predicted_price"], item["explanation"])
        shadow = item["shadow"]
        assert shadow["explanation"] == models[second_model_tag].explain_records([record]).row(0)
        assert adds_up(shadow["predicted_price"], shadow["explanation"])
    # /explain of one listing per arm: its arm's model and price, then the shadow's.
    for arm, body in explained.items():
        served, shadow = body["explanations"]
        item = answer[first_of[arm]]
        assert (served["arm"], served["model_tag"]) == (arm, item["model_tag"])
        assert served["predicted_price"] == item["predicted_price"]
        assert (shadow["arm"], shadow["model_tag"]) == ("shadow", second_model_tag)
        assert shadow["predicted_price"] == item["shadow"]["predicted_price"]
        assert adds_up(served["predicted_price"], served)
        assert adds_up(shadow["predicted_price"], shadow)


def test_after_a_hot_swap_explanations_come_from_the_new_champion(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    old, new = load_price_model(trained_model_tag), load_price_model(second_model_tag)
    settings = own_registry(stack_settings)
    with following_service(settings, trained_model_tag, tmp_path / "service.log") as service:
        wait_until(lambda: champion_is(service, trained_model_tag), 30, "the champion claimed")
        before = post(f"{service.url}/explain", {"listing": EXAMPLE_LISTING})
        lifecycle.promote(settings, second_model_tag, force=True)
        wait_until(lambda: champion_is(service, second_model_tag), 10, "the promotion served")
        after = post(f"{service.url}/explain", {"listing": EXAMPLE_LISTING})
        batch = post(
            f"{service.url}/predict_batch", {"records": [EXAMPLE_LISTING], "explain": True}
        )

    (was,) = before["explanations"]
    (now,) = after["explanations"]
    assert (was["model_tag"], now["model_tag"]) == (trained_model_tag, second_model_tag)
    assert was["predicted_price"] == old.predict_records([EXAMPLE_LISTING])[0]
    assert now["predicted_price"] == new.predict_records([EXAMPLE_LISTING])[0]
    assert was["base_price"] != now["base_price"], "each model has its own base"
    assert adds_up(now["predicted_price"], now)
    assert batch[0]["model_tag"] == second_model_tag
    assert batch[0]["explanation"] == new.explain_records([EXAMPLE_LISTING]).row(0)


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming_ml.cli", "explain", *args],
        env={**settings_env(settings), "COLUMNS": "100", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_explain_shows_the_written_price_per_arm_and_why(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    experiment = {"shadow": second_model_tag}
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as settings:
        dsn = dsn_of(settings)
        with running_bridge(settings):
            ids = load_listings(dsn, 5, seed=1520, table=settings.listings_table).ids
            wait_until(lambda: settled(dsn, settings, ids), 120, "the listings priced",
                       explain=lambda: where_stuck(settings, dsn, ids))  # fmt: skip
            wait_until(
                lambda: len(predictions_for(dsn, settings.shadow_table, ids)) == len(ids),
                60,
                "the shadow's rows written",
            )
        listing_id = ids[0]
        chart = cli(settings, str(listing_id))
        as_json = cli(settings, str(listing_id), "--json")
        missing = cli(settings, str(max(ids) + 1_000_000))
        service_down = cli(
            settings, str(listing_id), SML_SERVICE_URL=f"http://127.0.0.1:{free_port()}"
        )

    assert chart.returncode == 0, chart.stderr
    text = " ".join(chart.stdout.split())
    assert f"Listing {listing_id}" in text
    assert f"champion, {trained_model_tag}" in text and f"shadow, {second_model_tag}" in text
    assert all(f" {name} " in text for name in FEATURES) and "= price" in text
    body = json.loads(as_json.stdout)
    explanations = {e["arm"]: e for e in body["explanations"]}
    assert set(body["written"]) == set(explanations) == {"champion", "shadow"}
    for arm, row in body["written"].items():
        # The row the pipeline wrote and the service's explanation: one model, one price.
        assert row["model_tag"] == explanations[arm]["model_tag"]
        assert row["predicted_price"] == explanations[arm]["predicted_price"]
        assert f"£{row['predicted_price']:,.0f}" in text
        assert adds_up(row["predicted_price"], explanations[arm])
    assert missing.returncode == 1 and "no listing" in missing.stderr
    assert service_down.returncode == 1 and "not answering" in service_down.stderr


# -- in the stream: SML_BRIDGE_EXPLAIN --

EXPLANATION_COLUMNS = [f.name for f in EXPLANATION_FIELDS]


def written_explanation(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in EXPLANATION_COLUMNS}


def priced_and_shadowed(settings: Settings, rows: int, seed: int) -> tuple[str, list[int]]:
    """Insert ``rows`` listings with a bridge running; wait for their rows in both tables."""
    dsn = dsn_of(settings)
    with running_bridge(settings):
        ids = load_listings(dsn, rows, seed=seed, table=settings.listings_table).ids
        wait_until(lambda: settled(dsn, settings, ids), 120, "the listings priced",
                   explain=lambda: where_stuck(settings, dsn, ids))  # fmt: skip
        wait_until(
            lambda: len(predictions_for(dsn, settings.shadow_table, ids)) == len(ids),
            60,
            "the shadow's rows written",
        )
    return dsn, ids


def test_with_bridge_explain_each_row_carries_the_top_contributions_of_its_own_model(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    experiment = {
        "challenger": second_model_tag, "split_percent": 50.0, "shadow": second_model_tag,
    }  # fmt: skip
    models = {tag: load_price_model(tag) for tag in (trained_model_tag, second_model_tag)}
    with experiment_running(stack_settings, trained_model_tag, experiment, tmp_path) as served:
        settings = served.model_copy(update={"bridge_explain": True})
        dsn, ids = priced_and_shadowed(settings, 40, seed=1530)
        rows = listings(dsn, settings.listings_table, ids)
        url = f"{settings.prediction_url}/explain"
        explained = {i: post(url, {"listing": features(rows[i]), "listing_id": i}) for i in ids[:4]}
    predictions = predictions_for(dsn, settings.predictions_table, ids)
    shadows = predictions_for(dsn, settings.shadow_table, ids)

    assert {row["arm"] for row in predictions.values()} == {"champion", "challenger"}
    for i in ids:
        listing = features(rows[i])
        for row in (predictions[i], shadows[i]):
            # The row's own model, recomputed here: the same explanation, to the bit.
            model = models[row["model_tag"]]
            assert row["predicted_price"] == model.predict_records([listing])[0]
            expected = explanation_fields(model.explain_records([listing]).row(0))
            assert written_explanation(row) == expected, (i, row["arm"])
            assert None not in expected.values()
        assert shadows[i]["model_tag"] == second_model_tag
    # And as /explain lists them: its base and its first three contributions.
    for i, body in explained.items():
        for arm_explanation, row in zip(
            body["explanations"], (predictions[i], shadows[i]), strict=True
        ):
            assert arm_explanation["model_tag"] == row["model_tag"]
            assert row["base_price"] == arm_explanation["base_price"]
            top = arm_explanation["contributions"][:3]
            assert [row[f"top{k}_feature"] for k in (1, 2, 3)] == [c["feature"] for c in top]
            assert [row[f"top{k}_amount"] for k in (1, 2, 3)] == [c["amount"] for c in top]
    # The topic's records carry the same fields as the table.
    wanted = set(ids)
    records = [
        r for r in read_topic(settings, settings.predictions_topic)
        if r.value is not None and r.key["listing_id"] in wanted
    ]  # fmt: skip
    assert {r.key["listing_id"] for r in records} == wanted
    for record in records:
        row = predictions[record.key["listing_id"]]
        assert written_explanation(record.value) == written_explanation(row)


def test_with_bridge_explain_off_the_columns_are_null_and_the_prices_unchanged(
    stack_settings: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    assert settings.bridge_explain is False  # the default
    dsn = dsn_of(settings)
    with running_bridge(settings) as running:
        ids = load_listings(dsn, 30, seed=1540, table=settings.listings_table).ids
        predictions = wait_until(lambda: settled(dsn, settings, ids), 120, "the listings priced",
                                 explain=lambda: where_stuck(settings, dsn, ids))  # fmt: skip
        assert running.metric("sml_bridge_explained_total") == 0

    assert set(predictions) == set(ids)
    for row in predictions.values():
        assert written_explanation(row) == dict.fromkeys(EXPLANATION_COLUMNS), row
    assert_prices_match_service(prediction_service, listings(dsn, settings.listings_table, ids),
                                predictions)  # fmt: skip


def test_the_registry_accepts_the_explained_schema_as_a_compatible_evolution(
    stack_settings: Settings,
) -> None:
    """With FULL compatibility enforced on a subject that holds the schema from before
    explanations, the registry accepts the new one (readers of either version read
    records of the other); a field without a default, as a control, is refused."""
    registry, subject = stack_settings.registry_url, f"{unique('explained')}-value"
    new = avro.prediction_value_schema()
    old = {**new, "fields": [f for f in new["fields"] if f["name"] not in EXPLANATION_COLUMNS]}
    strict = {**new, "fields": [*new["fields"], {"name": "required_now", "type": "double"}]}

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, f"{registry}/{path}", json=body, timeout=10)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
        return response.json()

    def compatible(schema: dict[str, Any]) -> bool:
        path = f"compatibility/subjects/{subject}/versions/latest"
        return bool(call("POST", path, {"schema": json.dumps(schema)})["is_compatible"])

    call("POST", f"subjects/{subject}/versions", {"schema": json.dumps(old)})
    call("PUT", f"config/{subject}", {"compatibility": "FULL"})
    assert compatible(new)
    assert not compatible(strict)
    call("POST", f"subjects/{subject}/versions", {"schema": json.dumps(new)})
    assert len(call("GET", f"subjects/{subject}/versions")) == 2
