"""``streaming-ml reprice`` and the progress both it and ``model promote --reprice`` show."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import typer

from streaming_ml.cli.app import app, command_settings, json_option, print_report

if TYPE_CHECKING:
    from streaming_ml.bridge.reprice import Repricer
    from streaming_ml.datasets.reprice import Job
    from streaming_ml.system.waits import Deadline


def where_option() -> Any:
    return typer.Option(
        None, "--where", help="Only listings matching this SQL boolean expression: 'year < 2015'"
    )


def rate_option() -> Any:
    return typer.Option(
        None, "--rate", min=0.1, help="Listings touched per second (default: SML_REPRICE_RATE)"
    )


def settle_option() -> Any:
    return typer.Option(
        300.0,
        "--settle-timeout",
        min=0,
        help="Then wait up to this long for every touched listing's new price to be written "
        "(0: do not wait)",
    )


@app.command()
def reprice(
    model: str | None = typer.Option(
        None, "--model", help="Refuse to start unless this tag is the champion"
    ),
    where: str | None = where_option(),
    rate: float | None = rate_option(),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the unfinished job (re-running the command does too)"
    ),
    settle_timeout: float = settle_option(),
    as_json: bool = json_option("the job: done, total, state"),
) -> None:
    """Price every current listing again with the champion, through the stream (Debezium,
    bridge, service, sink): throttled, resumable after a kill, never over a newer price."""
    settings = command_settings()
    from streaming_ml.bridge.reprice import Repricer, RepriceRequest
    from streaming_ml.stack import postgres_dsn

    request = RepriceRequest(model=model, where=where, rate=rate, resume=resume)
    repricer = Repricer(settings, postgres_dsn(settings), request)
    job = run_with_progress(repricer, settle_timeout)
    print_report(job.as_dict(), as_json, title=f"re-pricing job {job.job_id}")


def run_with_progress(repricer: Repricer, settle_timeout_s: float) -> Job:
    """Run ``repricer`` with a progress bar on stderr (done / total, rate, ETA); then wait
    for the new prices to be written. Ctrl-C stops after the chunk in hand: resumable."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from streaming_ml.system.processes import stop_on_signals

    stop_on_signals(repricer.stop, "the chunk in hand, then the job stays resumable")
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("waiting for the service", total=None, rate="")

        def on_wait(served: str | None, deadline: Deadline) -> None:
            bar.update(
                task, description=f"service serves {served or 'nothing'}; waiting "
                f"{deadline.remaining():.0f} s more",
            )  # fmt: skip

        first: list[tuple[float, int]] = []  # (when, done) of this run's first chunk

        def on_job(job: Job) -> None:
            # This run's own rate: the job's average counts the time a kill left it idle.
            now = time.monotonic()
            first[:] = first or [(now, job.done)]
            began, done_then = first[0]
            rate = (job.done - done_then) / (now - began) if now > began else None
            bar.update(
                task, description=f"re-pricing with {job.model_tag} (job {job.job_id})",
                completed=job.done, total=job.total,
                rate=f"{rate:,.0f} rows/s" if rate else "",
            )  # fmt: skip

        repricer.on_wait, repricer.on_job = on_wait, on_job
        job = repricer.run()
        if job.state == "done" and settle_timeout_s > 0:
            bar.update(task, description="waiting for the new prices to be written")

            def on_settle(left: int, deadline: Deadline) -> None:
                bar.update(task, description=f"{left:,} prices still to be written")

            repricer.settle(job, settle_timeout_s, on_settle)
    if job.state != "done":
        typer.secho(
            f"stopped: job {job.job_id} is resumable; run `streaming-ml reprice --resume`",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    return job
