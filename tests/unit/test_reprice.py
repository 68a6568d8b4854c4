"""Re-pricing without a stack: the touch's plan, chunking, pacing, ETA, --where checks,
the job table's DDL and grants, and the CLI's wiring to the library."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from typer.testing import CliRunner

from streaming_ml.bridge.plan import plan_actions
from streaming_ml.cli import app
from streaming_ml.datasets.reprice import (
    DONE,
    RUNNING,
    Job,
    chunk_rows,
    clean_where,
    due_after_s,
    eta_s,
)
from streaming_ml.errors import RepriceError
from streaming_ml.kafka.changes import CHANGED_HEADER, Change, header_columns, parse_change
from streaming_ml.schema.listing import FEATURES
from streaming_ml.stack.postgres import schema_sql

runner = CliRunner()
ROW: dict[str, Any] = {
    "id": 7, "model": "Fiesta", "year": 2017, "price": 9000, "transmission": "Manual",
    "mileage": 21000, "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": 1.0,
    "__op": "u",
}  # fmt: skip
EVERY_COLUMN = frozenset({"id", *FEATURES, "price"})


def test_a_touch_is_priced_and_a_price_only_update_still_skipped() -> None:
    touch = parse_change({"id": 7}, ROW, EVERY_COLUMN, frozenset())
    price_only = parse_change({"id": 7}, ROW, EVERY_COLUMN - {"price"}, frozenset({"price"}))
    assert touch.touched and not price_only.touched
    assert [a.kind for a in plan_actions([touch, price_only])] == ["predict", "skip"]


def test_without_a_readable_changed_header_an_update_is_no_touch() -> None:
    """No header, or no before-image (empty unchanged list): not provably a touch."""
    assert not parse_change({"id": 7}, ROW, EVERY_COLUMN, None).touched
    assert not parse_change({"id": 7}, ROW, frozenset(), frozenset()).touched
    insert = parse_change({"id": 7}, {**ROW, "__op": "c"}, EVERY_COLUMN, frozenset())
    assert not insert.touched


def test_the_changed_header_is_read_as_debezium_writes_it() -> None:
    assert header_columns([(CHANGED_HEADER, b"[]")], CHANGED_HEADER) == frozenset()
    assert header_columns({CHANGED_HEADER: b'["mileage"]'}, CHANGED_HEADER) == {"mileage"}
    assert header_columns([(CHANGED_HEADER, b"nope")], CHANGED_HEADER) is None
    assert header_columns([], CHANGED_HEADER) is None
    assert Change("u", 1, {}, None, None).touched is False


@pytest.mark.parametrize(
    ("rate", "max_rows", "expected"),
    [(1000.0, 500, 200), (100.0, 500, 20), (1.0, 500, 1), (0.1, 500, 1), (10_000.0, 500, 500),
     (None, 300, 300)],
)  # fmt: skip
def test_chunks_are_about_a_fifth_of_a_second_and_never_above_the_setting(
    rate: float | None, max_rows: int, expected: int
) -> None:
    assert chunk_rows(rate, max_rows) == expected


def test_pacing_is_against_the_start_and_eta_from_the_rate() -> None:
    assert due_after_s(0, 500.0) == 0.0
    assert due_after_s(1000, 500.0) == 2.0
    assert due_after_s(1000, None) == 0.0
    assert eta_s(1000, 250.0) == 4.0
    assert eta_s(0, None) == 0.0
    assert eta_s(10, None) is None
    assert eta_s(10, 0.0) is None


def job(**update: Any) -> Job:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    fields: dict[str, Any] = {
        "job_id": 1, "model_tag": "ford_price:b", "where_sql": "", "rate": 100.0,
        "last_id": 400, "max_id": 1000, "total": 1000, "done": 400, "chunks": 20,
        "state": RUNNING, "started_at": start, "updated_at": start + dt.timedelta(seconds=4),
        "finished_at": None,
    }  # fmt: skip
    return Job(**(fields | update))


def test_a_job_reports_done_left_rate_and_eta() -> None:
    found = job().as_dict()
    assert (found["done"], found["left"], found["average_rate"], found["eta_s"]) == (
        400, 600, 100.0, 6.0,
    )  # fmt: skip
    assert found["started_at"] == "2026-01-01T00:00:00+00:00"
    finished = job(state=DONE, done=1000, last_id=1000).as_dict()
    assert (finished["left"], finished["eta_s"]) == (0, 0.0)
    assert job(done=0).average_rate() is None


@pytest.mark.parametrize(
    "where",
    ["true; DROP TABLE car_listings", "id > 0; COMMIT", "model = 'a;b'", "x" * 2001],
)
def test_a_where_that_could_be_more_than_one_expression_is_refused(where: str) -> None:
    with pytest.raises(RepriceError, match="--where"):
        clean_where(where)


def test_a_plain_where_is_kept_and_none_means_every_listing() -> None:
    assert clean_where("  year < 2015 AND model = 'Focus' ") == "year < 2015 AND model = 'Focus'"
    assert clean_where(None) == clean_where("   ") == ""


def test_the_job_table_is_in_the_schema_owned_by_the_app_and_readable_by_the_reader() -> None:
    text = schema_sql()
    assert "CREATE TABLE IF NOT EXISTS public.car_price_reprice_jobs (" in text
    assert "GRANT SELECT ON public.car_price_reprice_jobs TO cars_reader;" in text
    # Created after SET ROLE cars_app (so the app role owns it); nobody else may write it.
    assert text.index("SET ROLE cars_app;") < text.index("car_price_reprice_jobs")
    assert "car_price_reprice_jobs TO cars_sink" not in text


def test_reprice_options_reach_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming_ml.bridge.reprice as library
    import streaming_ml.cli.reprice as command
    import streaming_ml.stack as stack

    seen: dict[str, Any] = {}

    class FakeRepricer:
        def __init__(self, _settings: Any, dsn: str, request: Any, **_kw: Any) -> None:
            seen.update(dsn=dsn, request=request)

    monkeypatch.setattr(library, "Repricer", FakeRepricer)
    monkeypatch.setattr(stack, "postgres_dsn", lambda _s: "dsn")
    monkeypatch.setattr(command, "run_with_progress", lambda _r, timeout: job(state=DONE))
    args = ["reprice", "--model", "m:1", "--where", "year < 2015", "--rate", "50", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    request = seen["request"]
    assert (request.model, request.where, request.rate, request.resume) == (
        "m:1", "year < 2015", 50.0, False,
    )  # fmt: skip
    assert '"state": "done"' in result.stdout
    assert runner.invoke(app, ["reprice", "--rate", "0"]).exit_code == 2


def test_promote_with_reprice_promotes_then_runs_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming_ml.bridge.reprice as library
    import streaming_ml.cli.operate as operate
    import streaming_ml.stack as stack

    calls: list[tuple[str, Any]] = []

    def promote_and_reprice(_settings: Any, _dsn: str, tag: str, **kw: Any) -> Any:
        calls.append(("promote", (tag, kw["force"], kw["where"], kw["rate"])))
        return tag, "m:old", "the repricer"

    monkeypatch.setattr(library, "promote_and_reprice", promote_and_reprice)
    monkeypatch.setattr(stack, "postgres_dsn", lambda _s: "dsn")
    monkeypatch.setattr(
        operate, "run_with_progress",
        lambda r, timeout: calls.append(("run", (r, timeout))) or job(state=DONE, done=1000),
    )  # fmt: skip
    args = ["model", "promote", "m:new", "--reprice", "--force", "--rate", "20"]
    result = runner.invoke(app, [*args, "--settle-timeout", "0"])
    assert result.exit_code == 0, result.output
    assert calls == [("promote", ("m:new", True, None, 20.0)), ("run", ("the repricer", 0.0))]
    assert "job 1: 1,000 of 1,000 listings touched (done)" in result.stdout


def test_a_where_with_a_semicolon_is_refused_before_any_promotion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import streaming_ml.models.lifecycle as lifecycle
    import streaming_ml.stack as stack

    monkeypatch.setattr(stack, "postgres_dsn", lambda _s: "dsn")
    monkeypatch.setattr(lifecycle, "promote", lambda *_a: pytest.fail("promoted"))
    result = runner.invoke(app, ["model", "promote", "m:new", "--reprice", "--where", "1=1; --"])
    assert result.exit_code == 1
    assert "--where must be one boolean expression" in result.output


def test_bench_reports_the_reprice_rate_beside_the_sustained_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from io import StringIO

    from rich.console import Console

    from streaming_ml.bench import _run_all
    from streaming_ml.bench.options import BenchOptions
    from streaming_ml.bench.report import print_summary

    class FakeBench:
        options = BenchOptions(run_serving=False, run_latency=False, run_throughput=False)
        console = Console(file=StringIO())

        def reprice_run(self) -> dict[str, Any]:
            return {"reprice_rows_per_s": 2500.0, "touch_rows_per_s": 9000.0, "touched": 20_000}

    doc: dict[str, Any] = {"errors": [], "max_sustained_rows_per_s": 5000.0}
    _run_all(FakeBench(), doc)  # type: ignore[arg-type]
    assert doc["reprice_rows_per_s"] == 2500.0
    out = StringIO()
    print_summary({**doc, "bench": {"profile": "quick"}}, Console(file=out, width=200))
    assert "re-pricing: 2,500.0 rows/s over 20,000 rows" in out.getvalue()
    assert "sustained 5,000.0 rows/s" in out.getvalue()
    skipped = runner.invoke(app, ["bench", "--help"])
    assert "--skip-reprice" in skipped.output and "--reprice-rows" in skipped.output
    assert BenchOptions.quick().reprice_rows < BenchOptions().reprice_rows


@pytest.mark.parametrize(
    ("info", "registry_champion", "wanted", "expected"),
    [
        ({"tag": "m:a", "registry": {"following": True}}, "m:b", None, "m:b"),
        ({"tag": "m:a", "registry": {"following": True}}, None, "m:a", "m:a"),
        ({"tag": "m:a"}, "m:b", None, "m:a"),  # pinned: the registry does not steer it
        ({"tag": "m:a", "registry": {"following": True}}, "m:a", "m:b", "the champion is m:a"),
        ({"tag": "m:a"}, "m:b", "m:b", "is pinned to m:a"),
        (None, "m:b", None, "does not answer /model_info"),
    ],
)
def test_the_job_is_for_the_model_the_table_will_show(
    monkeypatch: pytest.MonkeyPatch,
    info: dict[str, Any] | None,
    registry_champion: str | None,
    wanted: str | None,
    expected: str,
) -> None:
    from streaming_ml.bridge import reprice
    from streaming_ml.config import Settings
    from streaming_ml.models.registry import Aliases

    aliases = Aliases(champions=[registry_champion] if registry_champion else [])
    monkeypatch.setattr(reprice.registry, "read_aliases", lambda _s: aliases)
    repricer = reprice.Repricer(Settings(), "dsn", reprice.RepriceRequest(model=wanted))
    monkeypatch.setattr(repricer.client, "model_info", lambda: info)
    if expected.startswith("m:"):
        assert repricer._check_champion(wanted) == expected
    else:
        with pytest.raises(RepriceError, match=expected):
            repricer._check_champion(wanted)
