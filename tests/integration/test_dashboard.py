"""The dashboard in headless Chromium on the real stack: a bridge, an evaluator and a
service that follows a registry of its own, with listings loaded, dead-lettered, looked up
and a model promoted while the page is open.

The page's figures are checked against what the pipeline did, not only for being there:
the throughput series integrate to the rows loaded, the latency points lie within the
latencies the predictions table records, the DLQ reason is the header the bridge wrote.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from streaming_ml.bridge.reprice import Repricer, RepriceRequest
from streaming_ml.config import Settings
from streaming_ml.dashboard import DashboardServer
from streaming_ml.datasets.load import load_listings
from streaming_ml.models import lifecycle
from streaming_ml.schema.listing import FEATURES, feature_problems
from tests.fixtures.adminer import CHROMIUM, CHROMIUM_ARGS
from tests.fixtures.ports import free_port
from tests.integration.following import champion_is, following_service, own_registry
from tests.integration.pipeline import (
    dsn_of,
    listings,
    query,
    read_topic,
    running_bridge,
    settled,
    wait_until,
    where_stuck,
)
from tests.integration.test_evaluation import (
    evaluation_settings,
    evaluator_starts_at_end,
    running_evaluator,
)

pytestmark = pytest.mark.integration

PAGE_TIMEOUT_MS = 120_000
VIEWPORT = {"width": 1600, "height": 1000}
UNKNOWN = "\N{EN DASH}"  # what the page shows for a missing value


def filled(page: Any, chart: str) -> int:
    """Points of a chart where some series is above 0 (the page keeps the count)."""
    return int(page.get_attribute(f"#{chart}", "data-filled"))


def integral(page: Any, series: str) -> float:
    """Sum of rate x interval over the page's points: the count a rate series stands for."""
    return page.evaluate(
        """(name) => {
            const p = window.dashboard.points;
            let total = 0;
            for (let i = 1; i < p.length; i++) {
                if (typeof p[i][name] === "number") total += p[i][name] * (p[i].t - p[i - 1].t);
            }
            return total;
        }""",
        series,
    )


def wait_for(page: Any, expression: str, arg: Any = None) -> None:
    page.wait_for_function(expression, arg=arg, timeout=PAGE_TIMEOUT_MS, polling=250)


def served_champion(page: Any) -> str | None:
    return page.get_attribute('#arms tr[data-arm="champion"][data-serving="true"]', "data-tag")


def pounds(amount: float) -> str:
    """How the page writes an amount (JavaScript's Math.round, thousands separators)."""
    return f"£{math.floor(amount + 0.5):,}"


def shown_pounds(text: str) -> int:
    """An amount as the page writes it ("£11,460", "+£1,556", "-£85") in pounds."""
    return int(text.replace("£", "").replace(",", ""))


def load_and_settle(settings: Settings, rows: int, seed: int, invalid: int) -> list[int]:
    """Insert ``rows`` listings at a pace the charts can follow (a few seconds); wait
    until every valid one is priced. Returns the ids."""
    dsn = dsn_of(settings)
    ids = load_listings(
        dsn, rows, seed=seed, invalid=invalid, rate=80, batch=4, table=settings.listings_table
    ).ids
    rows_by_id = listings(dsn, settings.listings_table, ids)
    valid = [i for i in ids if not feature_problems(rows_by_id[i])]
    wait_until(
        lambda: settled(dsn, settings, valid), 120, "every valid listing priced",
        explain=lambda: where_stuck(settings, dsn, valid),
    )  # fmt: skip
    return ids


def test_the_dashboard_shows_the_pipeline_its_latency_dead_letters_models_and_journeys(
    stack_settings: Settings,
    trained_model_tag: str,
    second_model_tag: str,
    tmp_path: Path,
) -> None:
    assert shutil.which(CHROMIUM), "chromium is installed by `streaming-ml stack install`"
    from playwright.sync_api import sync_playwright

    registry_settings = own_registry(stack_settings)
    with following_service(registry_settings, trained_model_tag, tmp_path / "service.log") as svc:
        wait_until(lambda: champion_is(svc, trained_model_tag), 30, "the champion claimed")
        # Small drift windows, so the drift strip fills with this test's few hundred rows.
        settings = evaluation_settings(
            registry_settings, svc.url, dashboard_port=free_port(), drift_window_rows=50
        )
        dsn = dsn_of(settings)
        evaluator_starts_at_end(settings)
        with (
            running_bridge(settings),
            running_evaluator(settings),
            DashboardServer(settings) as dashboard,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                console: list[tuple[str, str]] = []
                requested: list[str] = []
                page.on("console", lambda m: console.append((m.type, m.text)))
                page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
                page.on("request", lambda r: requested.append(r.url))
                page.goto(dashboard.url)
                page.wait_for_selector("#live.ok")
                # Every source answers before the traffic starts (the evaluator's topics
                # are found within its retry interval).
                wait_for(page, "() => window.dashboard.state && "
                         "Object.keys(window.dashboard.state.errors).length === 0")  # fmt: skip
                assert served_champion(page) == trained_model_tag
                before = {
                    name: filled(page, name) for name in ("throughput-chart", "latency-chart")
                }

                # Throughput and latency from the live traffic.
                ids = load_and_settle(settings, 240, seed=1201, invalid=4)
                rows = listings(dsn, settings.listings_table, ids)
                invalid = [i for i in ids if feature_problems(rows[i])]
                valid = [i for i in ids if i not in invalid]
                assert len(invalid) == 4
                wait_for(page, "(n) => window.dashboard.points.length && "
                         "Number(document.getElementById('latency-chart').dataset.filled) > n",
                         before["latency-chart"])  # fmt: skip
                assert filled(page, "throughput-chart") > before["throughput-chart"]
                # Rates over rounds add up to the rows loaded (a round or two after the
                # last row: wait until they have).
                for rate, total in (
                    ("priced", len(valid)),
                    ("captured", len(ids)),
                    ("consumed", len(ids)),
                ):
                    wait_for(page, """([rate, n]) => {
                        const p = window.dashboard.points; let s = 0;
                        for (let i = 1; i < p.length; i++)
                            if (typeof p[i][rate] === "number")
                                s += p[i][rate] * (p[i].t - p[i-1].t);
                        return s > n - 0.5; }""", [rate, total])  # fmt: skip
                assert integral(page, "priced") == pytest.approx(len(valid), abs=1.0)
                assert integral(page, "captured") == pytest.approx(len(ids), abs=1.0)
                assert integral(page, "consumed") == pytest.approx(len(ids), abs=1.0)
                latencies = [
                    r["written_ms"] - r["source_ts_ms"]
                    for r in query(
                        dsn,
                        "SELECT source_ts_ms, (extract(epoch FROM written_at) * 1000)::bigint "
                        f"AS written_ms FROM public.{settings.predictions_table} "
                        "WHERE listing_id = ANY(%s)",
                        (valid,),
                    )
                ]
                points = page.evaluate("() => window.dashboard.points")
                drawn = [
                    (p["latency_p50"], p["latency_p95"], p["latency_p99"])
                    for p in points
                    if "latency_p50" in p
                ]
                assert drawn
                for p50, p95, p99 in drawn:
                    assert min(latencies) - 1 <= p50 <= p95 <= p99 <= max(latencies) + 1
                end_to_end = page.locator('#stages tr[data-stage="end_to_end"] td').nth(4)
                assert int(end_to_end.inner_text().replace(",", "")) > 0

                # The invalid rows' reasons, as the bridge wrote them in the DLQ header.
                reasons = {
                    r.key["id"]: r.headers["reason"].decode()
                    for r in read_topic(settings, settings.dlq_topic, decode_value=False)
                    if r.key and r.key.get("id") in invalid
                }
                assert set(reasons) == set(invalid)
                for listing_id, reason in reasons.items():
                    shown = page.locator(f'#dlq-list li[data-listing="{listing_id}"] .reason')
                    shown.wait_for()
                    assert shown.inner_text() == reason
                assert integral(page, "dlq") == pytest.approx(len(invalid), abs=0.5)

                # A listing's journey: a dead-lettered one says why; a priced one shows
                # its features, every stage's time, its price, label and error.
                page.fill("#journey-id", str(invalid[0]))
                page.click("#journey-form button")
                page.wait_for_selector("#journey-result .badge.bad")
                assert "dead-lettered" in page.inner_text("#journey-result")
                assert "dead-lettered" in page.inner_text("#journey-why-reason")
                chosen = valid[len(valid) // 2]
                written = query(
                    dsn,
                    f"SELECT predicted_price FROM public.{settings.predictions_table} "
                    "WHERE listing_id = %s",
                    (chosen,),
                )[0]["predicted_price"]
                page.fill("#journey-id", str(chosen))
                page.click("#journey-form button")
                page.wait_for_selector('#journey-result tr[data-stage="written_ms"]')
                assert page.inner_text("#journey-result h3") == f"Listing {chosen}"
                stage_times = page.locator(
                    '#journey-result .timeline[data-arm="champion"] td.num:nth-child(2)'
                ).all_inner_texts()
                assert len(stage_times) == 6 and UNKNOWN not in stage_times
                price_row = page.locator('#journey-prices tr[data-arm="champion"] td')
                assert price_row.nth(1).inner_text() == trained_model_tag
                assert price_row.nth(2).inner_text() == pounds(written)
                assert price_row.nth(3).inner_text() == pounds(rows[chosen]["price"])
                assert price_row.nth(4).inner_text().replace("-", "") == pounds(
                    abs(written - rows[chosen]["price"])
                )
                assert page.inner_text("#explain-command") == f"streaming-ml explain {chosen}"
                # Why that price, as `streaming-ml explain` draws it: the champion's base and
                # one amount per feature, which add up to the price shown, the one written.
                why = page.locator('#journey-why .why-arm[data-arm="champion"]')
                assert why.get_attribute("data-tag") == trained_model_tag
                base = shown_pounds(why.locator("tr.base .amount").inner_text())
                amounts = [
                    shown_pounds(text)
                    for text in why.locator("tr[data-feature] .amount").all_inner_texts()
                ]
                assert len(amounts) == len(FEATURES)
                shown_price = why.locator("tr.total .amount").inner_text()
                assert shown_price == pounds(written)
                assert base + sum(amounts) == shown_pounds(shown_price)

                # A promotion: the model panel follows the registry and the service.
                wait_for(page, "() => Number(document.getElementById('mae-chart')"
                         ".dataset.filled) > 0")  # fmt: skip
                lifecycle.promote(registry_settings, second_model_tag, force=True)
                wait_for(page, """(tag) => {
                    const row = document.querySelector(
                        '#arms tr[data-arm="champion"][data-serving="true"]');
                    return row && row.dataset.tag === tag; }""", second_model_tag)  # fmt: skip
                assert page.get_attribute("#registry-line", "data-champion") == second_model_tag
                page.wait_for_selector('#events li[data-kind="promoted"]')
                markers = page.evaluate("() => window.dashboard.markers")
                assert {"kind": "promoted", "tag": second_model_tag} in [
                    {"kind": m["kind"], "tag": m["tag"]} for m in markers
                ]
                # Re-pricing with the new champion: the panel shows the job, done.
                request = RepriceRequest(model=second_model_tag, where=f"id >= {min(ids)}")
                job = Repricer(settings, dsn, request).run()
                assert job.state == "done" and job.done == job.total == len(ids)
                done_row = page.locator(f'#reprice tr[data-state="done"][data-job="{job.job_id}"]')
                done_row.wait_for()
                assert second_model_tag in done_row.inner_text()
                # Traffic after the promotion gives the new champion an accuracy line.
                load_and_settle(settings, 240, seed=1202, invalid=0)
                wait_for(page, "(key) => window.dashboard.points.some((p) => "
                         "typeof p[key] === 'number')",
                         f"mae|{second_model_tag}|champion")  # fmt: skip
                page.wait_for_selector("#drift td.cell[data-feature]")
                # Let a few more rounds come in so the screenshot has a settled page.
                page.wait_for_timeout(3_000)
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                print(f"dashboard screenshot: {tmp_path / 'dashboard.png'}")
            finally:
                browser.close()
    errors = [(kind, text) for kind, text in console if kind in ("error", "pageerror")]
    errors += [(kind, text) for kind, text in console if text.startswith("dashboard:")]
    assert errors == []
    local = urlsplit(dashboard.url).netloc
    elsewhere = [u for u in requested if not u.startswith("data:") and urlsplit(u).netloc != local]
    assert elsewhere == []
    assert any(u.endswith("/static/vendor/uplot/uPlot.iife.min.js") for u in requested)
