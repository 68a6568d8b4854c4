"""``streaming-ml demo``: the whole pipeline on this machine, from a fresh clone.

Starts the stack, trains a model if none exists, starts the service and the
bridge and the evaluator, inserts a few listings and shows each one with the price the pipeline
wrote back to Postgres and how long that took. Ctrl-C stops everything.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from contextlib import ExitStack
from typing import Any

from rich.console import Console
from rich.table import Table

from streaming_ml import stack
from streaming_ml.config import Settings
from streaming_ml.datasets.load import connect, load_listings, read_listings
from streaming_ml.datasets.predictions import wait_for_predictions
from streaming_ml.errors import StreamingMLError, WaitTimeoutError
from streaming_ml.evaluation import monitor as monitoring
from streaming_ml.run import Application, interrupt_on_sigterm
from streaming_ml.schema.listing import feature_problems
from streaming_ml.stack.secrets import APP_ROLE
from streaming_ml.system import processes
from streaming_ml.system.waits import wait_until

logger = logging.getLogger(__name__)

DEMO_SEED = 2020
PREDICTION_TIMEOUT_S = 180.0
ASSIGNMENT_TIMEOUT_S = 60.0


def _cell(value: Any, number_format: str = "") -> str:
    """Invalid listings have NULLs and odd values: show them as they are."""
    if value is None:
        return "[red]NULL"
    if number_format and isinstance(value, int | float):
        return format(value, number_format)
    return str(value)


def results_table(
    listings: dict[int, dict[str, Any]], predictions: dict[int, dict[str, Any]]
) -> Table:
    """Fits 80 columns: the listing, its price and how long the pipeline took."""
    table = Table(title="Listings and the prices the pipeline wrote back to Postgres")
    table.add_column("id", justify="right")
    table.add_column("model")
    table.add_column("year", justify="right")
    table.add_column("miles", justify="right")
    table.add_column("fuel")
    table.add_column("asking £", justify="right")
    table.add_column("predicted £", justify="right", style="bold green")
    table.add_column("commit→row", justify="right")
    for lid, row in listings.items():
        pred = predictions.get(lid)
        latency = "-"
        if pred and pred.get("written_ms") and pred.get("source_ts_ms"):
            latency = f"{pred['written_ms'] - pred['source_ts_ms']:.0f} ms"
        table.add_row(
            str(lid), _cell(row["model"]), _cell(row["year"]), _cell(row["mileage"], ","),
            _cell(row["fuelType"]), _cell(row["price"], ","),
            f"{pred['predicted_price']:,.0f}" if pred else "[red]DLQ",
            latency,
        )  # fmt: skip
    return table


def run_demo(settings: Settings, rows: int = 8, wait: bool = True) -> None:
    """Run the demo: the stack, then what ``streaming-ml run`` starts, then a few listings.
    With ``wait`` keep everything up until Ctrl-C, then stop what it started: a stack that
    was already running stays up, as it was found."""

    console = Console()
    interrupt_on_sigterm()  # `kill <pid>` stops the demo as cleanly as Ctrl-C does
    console.rule("[bold]streaming-ml demo")
    console.print("[bold]1/4[/] installing what is missing (idempotent)…")
    stack.install(settings)
    console.print("[bold]2/4[/] starting Postgres, Kafka, registry, Kafka Connect, Adminer…")
    with ExitStack() as cleanup:
        found_running = stack.stack_running(settings)
        stack.up(settings)
        if found_running:
            console.print("  the stack was already running: it stays up when the demo ends")
        else:
            cleanup.callback(lambda: _stop_stack(settings, console))
        console.print(
            "[bold]3/4[/] starting the service, bridge, evaluator, dashboard and connector "
            "watchdog (what `streaming-ml run` starts)…"
        )
        application = Application(settings, console=console)
        application.start()
        cleanup.callback(application.stop)
        console.print(f"  dashboard: {settings.dashboard_url}")
        dsn = stack.postgres_dsn(settings)

        # Inserting before the group has partitions would show its start-up as latency.
        try:
            wait_until(
                application.assigned_partitions, done=lambda owned: owned > 0,
                timeout=ASSIGNMENT_TIMEOUT_S, interval=0.5, what="the bridge's partitions",
            )  # fmt: skip
        except WaitTimeoutError:
            console.print(
                f"  [yellow]the bridge has no partitions after {ASSIGNMENT_TIMEOUT_S:.0f} s; "
                "inserting anyway (see `streaming-ml stack logs bridge-0`)[/]"
            )

        # One at a time, a few per second, like listings arriving from an app.
        console.print(f"[bold]4/4[/] inserting {rows} listings (one of them invalid)…")
        summary = load_listings(
            dsn, rows, seed=DEMO_SEED + int(time.time()) % 1000, invalid=1 if rows > 1 else 0,
            batch=1, rate=4, table=settings.listings_table,
        )  # fmt: skip
        console.print(f"  {summary.describe()}")
        conn = connect(dsn)
        try:
            inserted = read_listings(conn, settings.listings_table, summary.ids)
        finally:
            conn.close()
        valid = [lid for lid, row in inserted.items() if not feature_problems(row)]
        predictions = wait_for_predictions(
            dsn,
            settings.predictions_table,
            valid,
            PREDICTION_TIMEOUT_S,
            on_progress=lambda found, wanted, elapsed: console.print(
                f"  waiting for predictions: {found}/{wanted} after {elapsed:.0f}s "
                f"(up to {PREDICTION_TIMEOUT_S:.0f}s)"
            ),
        )
        dead = application.dead()
        if dead:
            raise StreamingMLError(
                f"{', '.join(dead)} exited; see `streaming-ml stack logs {dead[0]}`"
            )
        console.print(results_table(inserted, predictions))
        _print_accuracy(console, settings, len(predictions))
        if predictions:
            to_model = statistics.median(p["end_to_end_ms"] for p in predictions.values())
            to_row = statistics.median(
                p["written_ms"] - p["source_ts_ms"] for p in predictions.values()
            )
            console.print(
                f"median latency from the INSERT's commit: {to_model:.0f} ms to the model's "
                f"answer, {to_row:.0f} ms to the prediction row in Postgres."
            )
        console.print(
            f"{len(predictions)}/{len(valid)} valid listings priced; invalid ones went to the "
            f"DLQ topic [bold]{settings.dlq_topic}[/] with their reason."
        )
        if len(predictions) < len(valid):
            raise StreamingMLError(
                f"only {len(predictions)} of {len(valid)} listings were priced within "
                f"{PREDICTION_TIMEOUT_S:.0f}s; see `streaming-ml stack logs connect` and "
                "`streaming-ml stack logs bridge-0`"
            )
        _print_endpoints(console, settings, application, APP_ROLE)
        if not wait:
            return
        console.print("[bold]Running. Insert rows (Adminer or psql) and watch them get priced. "
                      "Ctrl-C stops everything.")  # fmt: skip
        stop = threading.Event()
        processes.stop_on_signals(stop.set, "stopping the demo")
        application.wait(stop)
        console.print("\nstopping the application and the stack…")


def _print_accuracy(console: Console, settings: Settings, priced: int) -> None:
    """The champion's running accuracy once the demo's listings are judged (their price
    came with the insert, so each is labelled at once), read from the outcomes topic."""

    def judged(snapshot: dict[str, Any]) -> int:
        return sum(entry["cumulative"]["n"] for entry in snapshot["pairs"].values())

    # The accuracy is printed either way: if the evaluator is slow, over fewer listings.
    try:
        snapshot = wait_until(
            lambda: monitoring.snapshot(settings, timeout_s=10),
            done=lambda current: judged(current) >= priced,
            timeout=30, interval=0.5, what="the evaluator judging the demo's listings",
        )  # fmt: skip
    except WaitTimeoutError:
        snapshot = monitoring.snapshot(settings, timeout_s=10)
    for entry in snapshot["pairs"].values():
        c = entry["cumulative"]
        if c["n"]:
            console.print(
                f"accuracy of {entry['model_tag']} ({entry['arm']}) on the labels so far: "
                f"MAE £{c['mae']:,.0f}, MAPE {c['mape']:.1%} over {c['n']} listings "
                "(live view: `streaming-ml monitor`)."
            )


def _print_endpoints(
    console: Console, settings: Settings, application: Application, role: str
) -> None:
    table = Table(title="Endpoints", show_header=False)
    table.add_row("Adminer", f"http://{settings.host}:{settings.adminer_port}/")
    table.add_row(
        "  login",
        f"System: PostgreSQL, Server: {settings.host}:{settings.postgres_port}, "
        f"Username: {role}, Database: {settings.database}",
    )
    table.add_row("  password", "`streaming-ml stack credentials adminer` prints it")
    table.add_row("Prediction service", f"{application.service_url}  (POST /predict_batch, /docs)")
    table.add_row("Bridge metrics", ", ".join(application.bridge_metrics_urls))
    table.add_row("Dashboard", f"{settings.dashboard_url}  (live, read-only)")
    table.add_row(
        "Evaluator metrics",
        f"http://{settings.host}:{settings.evaluator_metrics_port}/metrics  "
        "(accuracy, drift: `streaming-ml monitor`)",
    )
    table.add_row("Kafka", settings.kafka_bootstrap)
    table.add_row("Schema registry", settings.registry_url)
    table.add_row("Kafka Connect", settings.connect_url + "/connectors")
    console.print(table)


def _stop_stack(settings: Settings, console: Console) -> None:

    console.print("stopping the stack…")
    stack.down(settings)
