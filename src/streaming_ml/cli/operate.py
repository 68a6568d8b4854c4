"""Operating the pipeline: ``stack``, ``connectors``, ``topics``, ``model``, ``experiment``,
``compose``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from streaming_ml.cli.app import (
    Login,
    RenderFormat,
    command_settings,
    compose_app,
    connectors_app,
    experiment_app,
    json_option,
    model_app,
    print_report,
    stack_app,
    topics_app,
)
from streaming_ml.cli.reprice import rate_option, run_with_progress, settle_option, where_option
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.errors import ConfigError, ConnectorError, StackError


@stack_app.command("install")
def stack_install() -> None:
    """Install missing Debian packages and fetch the pinned jars (idempotent)."""
    settings = command_settings()
    from streaming_ml.stack import install

    install(settings)


@stack_app.command("up")
def stack_up() -> None:
    """Start Postgres, Kafka, the registry, Kafka Connect and Adminer; wait until healthy."""
    settings = command_settings()
    from streaming_ml.stack import up

    up(settings)


@stack_app.command("down")
def stack_down(purge: bool = typer.Option(False, help="Also delete all state")) -> None:
    """Stop every component; ports are free afterwards."""
    settings = command_settings()
    from streaming_ml.stack import down

    down(settings, purge=purge)


@stack_app.command("status")
def stack_status(as_json: bool = json_option("each component's state")) -> None:
    """Each component's state and endpoint.

    Exit codes: 0 every component runs; 1 one is down.
    """
    settings = command_settings()
    from streaming_ml.stack import print_status, status

    current = status(settings)
    # Components can all run while the pipeline is stuck on a FAILED connector task.
    failures = _connector_failures(settings)
    if as_json:
        current["connect"]["failures"] = failures
    healthy = print_status(current, as_json=as_json)
    if not as_json:
        for line in failures:
            typer.secho(f"          {line}", fg="red", err=True)
    if not healthy:
        raise typer.Exit(1)


def _connector_failures(settings: Settings) -> list[str]:
    """Why each FAILED connector part failed, one line each; none when Connect is not
    answering (the component's own state says that)."""
    from streaming_ml.connect import commands

    try:
        return commands.failure_lines(commands.status(settings))
    except ConnectorError:
        return []


@stack_app.command("logs")
def stack_logs(
    component: str | None = typer.Argument(
        None,
        help="A component (postgres, kafka, registry, connect, adminer) or a process that "
        "`streaming-ml run` started (service, bridge-0, evaluator, dashboard, watchdog, "
        "learner); default: all",
    ),
    lines: int = typer.Option(50, "--lines", "-n", help="Lines from the end of each log"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines"),
) -> None:
    """Show the tail of component logs."""
    settings = command_settings()
    from streaming_ml.stack import log_files, print_logs

    try:
        paths = [str(path) for path in log_files(settings, component)]
    except StackError as error:  # an unknown name: a usage error, with the choices
        raise typer.BadParameter(str(error), param_hint="COMPONENT") from None
    if not follow:
        print_logs(settings, component=component, lines=lines)
        return
    if not paths:
        raise typer.BadParameter("no log file yet", param_hint="COMPONENT")
    # tail follows renamed and recreated files; Ctrl-C ends it.
    os.execvp("tail", ["tail", "-n", str(lines), "-F", *paths])


@stack_app.command("psql")
def stack_psql(
    command: str | None = typer.Option(None, "--command", "-c", help="Run one statement"),
) -> None:
    """Open psql on the stack's database as the application role."""
    settings = command_settings()
    from streaming_ml.stack import psql

    code = psql(settings, command=command)
    raise typer.Exit(code)


@connectors_app.command("apply")
def connectors_apply(as_json: bool = json_option("each connector's state")) -> None:
    """Create the topics (SML_PARTITIONS) and apply the five connectors (the source and four
    sinks); wait until they run."""
    settings = command_settings()
    from streaming_ml.connect import commands

    commands.apply(settings)
    print_report(commands.status(settings), as_json, title="connectors")


@connectors_app.command("status")
def connectors_status(as_json: bool = json_option("each connector's state")) -> None:
    """Each connector's and task's state.

    Exit codes: 0 every connector and task is RUNNING; 1 one is not (or Connect is down).
    """
    settings = command_settings()
    from streaming_ml.connect import commands

    summary = commands.status(settings)
    print_report(summary, as_json, title="connectors")
    if not as_json:
        for line in commands.failure_lines(summary):
            typer.secho(line, fg="red", err=True)
    running = all(
        info["state"] == "RUNNING" and info["tasks"] and set(info["tasks"]) == {"RUNNING"}
        for info in summary.values()
    )
    raise typer.Exit(0 if running else 1)


@connectors_app.command("recover-schema")
def connectors_recover_schema(
    timeout: float = typer.Option(
        300.0, help="Seconds to wait for the source to read the WAL written before this call"
    ),
    as_json: bool = json_option("what was recovered"),
) -> None:
    """Get the source past changes the registry refused (an incompatible column type),
    losing none: revert the column first. Lifts the compatibility rule for the change
    topic's value subject only, restarts the source task, waits until it has read every
    change written before this call, then restores the rule. The bridge dead-letters the
    rows of the incompatible time; price them again with `streaming-ml reprice --where`."""
    settings = command_settings()
    from rich.console import Console

    from streaming_ml.connect import commands

    with Console(stderr=True).status("recover-schema: lifting the rule") as spinner:
        report = commands.recover_schema(settings, timeout, progress=spinner.update)
    print_report(report, as_json, title="connectors recover-schema")


@connectors_app.command("watch")
def connectors_watch(
    interval: float | None = typer.Option(
        None, help="Seconds between checks (default: SML_CONNECTOR_CHECK_INTERVAL_S)"
    ),
    metrics_port: int | None = typer.Option(
        None, help="Port of /metrics on SML_HOST (default: SML_WATCHDOG_METRICS_PORT)"
    ),
) -> None:
    """Restart FAILED connector parts until Ctrl-C (run one of these, not one per bridge);
    /metrics has the restarts and the replication slot's health."""
    settings = command_settings()
    from streaming_ml.connect import commands

    interval_s = settings.connector_check_interval_s if interval is None else interval
    if interval_s <= 0:
        # 0 turns off the bridge's own watchdog; a watcher that never checks is no watcher.
        raise ConfigError(
            "connectors watch needs an interval above 0 (--interval or "
            "SML_CONNECTOR_CHECK_INTERVAL_S); 0 only turns off the bridge's watchdog"
        )
    commands.watch(settings, interval_s, metrics_port or settings.watchdog_metrics_port)


def _metric(summary: dict[str, object]) -> str:
    cv = summary.get("cv")
    if isinstance(cv, dict) and "rmse" in cv:
        return f"CV RMSE {float(cv['rmse']):,.0f}"
    holdout = summary.get("validation")
    if isinstance(holdout, dict) and "rmse" in holdout:
        return f"holdout RMSE {float(holdout['rmse']):,.0f}"
    return "-"


@topics_app.command("migrate")
def topics_migrate(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be migrated"),
    as_json: bool = json_option("what was migrated"),
) -> None:
    """Repartition the pipeline's topics to SML_PARTITIONS without losing a record.

    Stop the bridges and the evaluator first (the bridge group must have priced every
    change). The connectors are deleted, each odd topic is copied out, recreated and
    copied back, the bridge and evaluator groups start at the new ends, the sinks read
    the topics again, and the connectors are applied again. Safe to run again after a
    crash: it finishes what was left.
    """
    settings = command_settings()
    from streaming_ml.connect import repartition

    if dry_run:
        plan = repartition.migration_plan(settings)
        steps = {p.topic: {"partitions": p.partitions, "step": str(p.step)} for p in plan}
        print_report({"partitions": settings.partitions, "topics": steps}, as_json, "plan")
        return
    progress = (lambda _line: None) if as_json else typer.echo
    report = repartition.migrate_topics(settings, progress=progress)
    print_report(report, as_json, title="topics migrate")


@model_app.command("list")
def model_list(as_json: bool = typer.Option(False, "--json", help="One JSON array")) -> None:
    """Every model in the local store or the registry, with its aliases."""
    settings = command_settings()
    from rich.console import Console
    from rich.table import Table

    from streaming_ml.models.lifecycle import model_rows

    rows, aliases, problem = model_rows(settings)
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], default=str))
        return
    table = Table("tag", "created", "data", "offline metrics", "aliases", "where")
    for row in rows:
        where = " + ".join(
            w for w, here in (("local", row.local), ("kafka", row.published)) if here
        )
        table.add_row(
            row.summary.tag, row.summary.created_at[:19], row.summary.source,
            _metric(row.summary.model_dump()), ", ".join(row.aliases), where,
        )  # fmt: skip
    console = Console()
    console.print(table)
    if problem is not None:
        console.print(f"[yellow]registry not read[/]: {problem}")
    if aliases is not None and aliases.unreadable:
        console.print(f"[yellow]{aliases.unreadable} unreadable registry events skipped[/]")


@model_app.command("describe")
def model_describe(
    tag: str = typer.Argument(..., help="Model tag, e.g. ford_price:abc123"),
    as_json: bool = json_option("the model's description"),
) -> None:
    """A model's metadata, offline metrics, aliases and registry events."""
    settings = command_settings()
    from streaming_ml.models.lifecycle import describe

    print_report(describe(settings, tag), as_json, title=tag)


@model_app.command("promote")
def model_promote(
    tag: str = typer.Argument(..., help="Model tag to make the champion"),
    force: bool = typer.Option(False, "--force", help="Promote even if its metrics are worse"),
    reprice: bool = typer.Option(
        False,
        "--reprice",
        help="Then price every listing again with it (waits for the swap; `streaming-ml reprice`)",
    ),
    where: str | None = where_option(),
    rate: float | None = rate_option(),
    settle_timeout: float = settle_option(),
) -> None:
    """Make a model the champion: every service replica swaps to it within seconds."""
    settings = command_settings()
    if not reprice:
        from streaming_ml.models.lifecycle import promote

        new, previous = promote(settings, tag, force)
        typer.echo(f"champion: {new} (was {previous or 'none'}); services swap within seconds")
        return
    from streaming_ml.bridge.reprice import promote_and_reprice
    from streaming_ml.stack import postgres_dsn

    new, previous, repricer = promote_and_reprice(
        settings, postgres_dsn(settings), tag, force=force, where=where, rate=rate
    )
    typer.echo(f"champion: {new} (was {previous or 'none'}); re-pricing every listing", err=True)
    job = run_with_progress(repricer, settle_timeout)
    typer.echo(f"job {job.job_id}: {job.done:,} of {job.total:,} listings touched ({job.state})")


@model_app.command("rollback")
def model_rollback() -> None:
    """Bring the previous champion back on every replica."""
    settings = command_settings()
    from streaming_ml.models.lifecycle import rollback

    restored, retired = rollback(settings)
    typer.echo(f"champion: {restored} (rolled back from {retired})")


@experiment_app.command("start")
def experiment_start(
    challenger: str | None = typer.Option(None, help="Model tag for the B arm"),
    split: float = typer.Option(
        0.0, help="Percent of listings (sticky by id) the challenger prices"
    ),
    shadow: str | None = typer.Option(
        None, help="Model tag that also prices every listing, unserved"
    ),
) -> None:
    """Start an A/B split and/or a shadow model (replaces a running experiment)."""
    settings = command_settings()
    from streaming_ml.models.lifecycle import start_experiment

    event = start_experiment(settings, challenger, split, shadow)
    typer.echo(
        f"experiment: challenger {event.challenger or '-'} at {event.split_percent:g}%, "
        f"shadow {event.shadow or '-'}"
    )


@experiment_app.command("status")
def experiment_status(as_json: bool = json_option("the champion and the experiment")) -> None:
    """The champion and the running experiment."""
    settings = command_settings()
    from streaming_ml.models import registry

    aliases = registry.read_aliases(settings)
    experiment = aliases.experiment
    report = {
        "champion": aliases.champion,
        "previous": aliases.previous_champion,
        "experiment": None if experiment is None else experiment.__dict__,
    }
    print_report(report, as_json, title="experiment")


@experiment_app.command("stop")
def experiment_stop() -> None:
    """Stop the experiment: every listing goes back to the champion."""
    settings = command_settings()
    from streaming_ml.models.lifecycle import stop_experiment

    stopped = stop_experiment(settings)
    typer.echo("experiment stopped" if stopped else "no experiment was running")


@compose_app.command("init")
def compose_init(
    env_file: Path = typer.Option(REPO_ROOT / ".env", help="Compose's .env file (0600)"),
    state_dir: Path = typer.Option(
        REPO_ROOT / ".stack" / "compose", help="Where the host CLI finds the same passwords"
    ),
) -> None:
    """Generate the compose stack's database passwords (once; existing values are kept)."""
    command_settings()
    from streaming_ml.stack.compose import init

    added = init(env_file, state_dir)
    if added:
        typer.echo(f"{env_file}: generated {', '.join(added)} (mode 0600)")
    else:
        typer.echo(f"{env_file}: every password already set")
    typer.echo(f"host CLI: export SML_STATE_DIR={state_dir}")


@compose_app.command("postgres-init")
def compose_postgres_init() -> None:
    """Inside the compose stack (its one-shot postgres-init service): apply postgres/NN-*.sql
    and set each role's password from POSTGRES_PASSWORD and SML_PG_*_PASSWORD, sent to
    Postgres as SCRAM verifiers. Safe to run again."""
    settings = command_settings()
    from streaming_ml.stack.compose import init_database

    init_database(settings)
    typer.echo("postgres-init: roles and schema ready")


@stack_app.command("credentials")
def stack_credentials(
    what: Login = typer.Argument(Login.ADMINER, help="Which login to print"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object"),
) -> None:
    """Print what to type into Adminer's login form (system, server, user, password,
    database) for the local stack; the password is read from the stack's 0600 secrets."""
    settings = command_settings()
    from streaming_ml.stack.secrets import APP_ROLE, load_passwords

    login = {
        "system": "PostgreSQL",
        "server": f"{settings.host}:{settings.postgres_port}",
        "username": APP_ROLE,
        "password": load_passwords(settings.state_dir)[APP_ROLE],
        "database": settings.database,
        "url": f"http://{settings.host}:{settings.adminer_port}/",
    }
    if as_json:
        typer.echo(json.dumps(login))
        return
    for key, value in login.items():
        typer.echo(f"{key + ':':<10} {value}")


@connectors_app.command("show")
def connectors_show(
    name: str = typer.Argument(..., help="A connector's name (`streaming-ml connectors status`)"),
) -> None:
    """Print one connector's config as `connectors apply` sends it (JSON), rendered for
    the current settings."""
    settings = command_settings()
    from streaming_ml.connect.client import load_connector

    if name not in settings.connector_names:
        raise ConfigError(
            f"no connector {name!r}; the pipeline's are {', '.join(settings.connector_names)}"
        )
    typer.echo(json.dumps(load_connector(name, settings), indent=2, sort_keys=True))


@connectors_app.command("render")
def connectors_render(
    output_format: RenderFormat = typer.Option(
        RenderFormat.JSON,
        "--format",
        help="json: the configs `connectors apply` sends, by name; strimzi: KafkaConnector "
        "resources (YAML) for deploy/k8s",
    ),
    in_cluster: bool = typer.Option(
        False,
        "--in-cluster",
        help="Point the connectors at deploy/k8s's Services (postgres:5432, the Strimzi "
        "bootstrap Service, registry:8081) instead of the settings' endpoints",
    ),
) -> None:
    """Print every connector's config rendered from debezium/*.json, as JSON or as
    Strimzi KafkaConnector resources."""
    settings = command_settings()
    from streaming_ml.connect import strimzi

    endpoints = strimzi.KUBERNETES_ENDPOINTS if in_cluster else None
    if output_format is RenderFormat.JSON:
        configs = strimzi.rendered_connectors(settings, endpoints)
        typer.echo(json.dumps(configs, indent=2, sort_keys=True))
    else:
        typer.echo(strimzi.yaml_documents(strimzi.kafka_connectors(settings, endpoints)), nl=False)
