"""The command groups of ``streaming-ml``, its error reporting and its settings."""

from __future__ import annotations

import enum
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import typer
from typer.core import TyperGroup

from streaming_ml.config import Settings
from streaming_ml.errors import StreamingMLError
from streaming_ml.log import configure_logging


class _ReportingErrors(TyperGroup):
    """Every command's StreamingMLError becomes one red line and exit code 1: the
    message already says what failed and what to do, a traceback would only bury it."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except StreamingMLError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    help="CDC-driven model serving: Postgres -> Debezium -> Kafka -> BentoML -> Kafka -> Postgres.",
    no_args_is_help=True,
    cls=_ReportingErrors,
)
stack_app = typer.Typer(help="Run the real CDC stack as local processes.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
connectors_app = typer.Typer(
    help="The source and sink connectors: apply, status, watch.", no_args_is_help=True
)
app.add_typer(connectors_app, name="connectors")
model_app = typer.Typer(
    help="Model versions: list, describe, promote, rollback (the registry in Kafka).",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")
experiment_app = typer.Typer(
    help="A/B and shadow experiments: start, status, stop.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")
topics_app = typer.Typer(
    help="The pipeline's topics: migrate to SML_PARTITIONS partitions.", no_args_is_help=True
)
app.add_typer(topics_app, name="topics")
compose_app = typer.Typer(help="The Docker Compose stack's secrets.", no_args_is_help=True)
app.add_typer(compose_app, name="compose")


def _print_version(wanted: bool) -> None:
    if wanted:
        try:
            found = version("streaming-ml-pipeline")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "unknown (not installed)"
        typer.echo(f"streaming-ml {found}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version"
    ),
) -> None:
    """CDC-driven model serving: Postgres -> Debezium -> Kafka -> BentoML -> Kafka -> Postgres.

    Exit codes: 0 done; 1 a command failed (its message says what to do) or, for the
    status commands, something is down; 2 a usage error.
    """


# The choices --help lists and typos are refused against. They mirror names the library
# defines in modules too heavy to import for --help; tests/unit/test_cli.py keeps them equal.
class Scenario(enum.StrEnum):
    NORMAL = "normal"
    PRICE_SHIFT = "price-shift"
    FEATURE_SHIFT = "feature-shift"
    LATE_LABELS = "late-labels"


class StudyScenario(enum.StrEnum):
    PRICE_SHIFT = "price-shift"


class Candidate(enum.StrEnum):
    RESIDUAL = "residual"
    ARF = "arf"
    HOEFFDING = "hoeffding"
    LINEAR = "linear"


class InsertMode(enum.StrEnum):
    BATCHED = "batched"
    SINGLE = "single"


class Component(enum.StrEnum):
    POSTGRES = "postgres"
    KAFKA = "kafka"
    REGISTRY = "registry"
    CONNECT = "connect"
    ADMINER = "adminer"


class Login(enum.StrEnum):
    ADMINER = "adminer"


def print_report(report: Any, as_json: bool, title: str | None = None) -> None:
    """A command's report: one JSON document on one line with --json, else a table of its fields
    (nested fields as dotted names) for a person to read."""
    if as_json:
        # One line: a document to pipe into jq or parse, whatever its size.
        typer.echo(json.dumps(report, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in _flattened(report):
        table.add_row(key, value)
    Console().print(table)


def _flattened(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows += _flattened(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return [(prefix, ", ".join(str(v) for v in value))]
    if isinstance(value, dict | list):
        return [(prefix, json.dumps(value, default=str))]
    if isinstance(value, float):
        return [(prefix, f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}")]
    return [(prefix, "-" if value is None else str(value))]


def json_option(what: str = "the report") -> Any:
    return typer.Option(False, "--json", help=f"Print {what} as one JSON document")


class RenderFormat(enum.StrEnum):
    JSON = "json"
    STRIMZI = "strimzi"


def command_settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return settings


def main() -> None:
    app()
