"""The command line's shape: choices that match the library, errors, version, entry points."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from streaming_ml import stack
from streaming_ml.bench.options import BenchOptions
from streaming_ml.cli import app
from streaming_ml.cli.app import Candidate, Component, InsertMode, Scenario
from streaming_ml.config import Settings
from streaming_ml.connect.client import load_connector
from streaming_ml.datasets.load import SCENARIOS, csv_records
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.models.online import CANDIDATES
from streaming_ml.schema.listing import LISTING_COLUMNS
from streaming_ml.stack.secrets import APP_ROLE, ensure_passwords

runner = CliRunner()


def test_the_cli_choices_are_the_library_names() -> None:
    assert [s.value for s in Scenario] == list(SCENARIOS)
    assert {c.value for c in Candidate} == set(CANDIDATES)
    assert {m.value for m in InsertMode} == set(
        typing.get_args(typing.get_type_hints(BenchOptions)["insert_mode"])
    )
    assert [c.value for c in Component] == [c.name for c in stack.COMPONENTS]


@pytest.mark.parametrize(
    "args",
    [
        ["load", "--rows", "3", "--scenario", "price-shfit"],
        ["train", "--online", "--candidate", "resdual"],
        ["evaluate", "--prequential", "--candidate", "arf,hoefding"],
        ["bench", "--insert-mode", "singel"],
        ["stack", "logs", "kafak"],
        ["stack", "credentials", "pgadmin"],
    ],
)
def test_a_typo_in_a_choice_is_refused_with_the_choices(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output


def test_a_library_error_is_one_line_and_exit_code_one() -> None:
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --data CSV is required (or use --prequential)"


def test_load_needs_rows_or_a_csv() -> None:
    result = runner.invoke(app, ["load"])
    assert result.exit_code == 1
    assert "--rows N is required (or --csv PATH" in result.output


def test_version_and_the_module_entry_points() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("streaming-ml ")
    for module in ("streaming_ml", "streaming_ml.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == result.output


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output
    assert "--show-completion" in result.output


@pytest.mark.parametrize("name", Settings().connector_names)
def test_connectors_show_prints_what_apply_sends(name: str) -> None:
    result = runner.invoke(app, ["connectors", "show", name])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == load_connector(name, Settings())


def test_connectors_show_names_the_connectors_when_one_is_unknown() -> None:
    result = runner.invoke(app, ["connectors", "show", "cars-source"])
    assert result.exit_code == 1
    for name in Settings().connector_names:
        assert name in result.output


def test_stack_credentials_prints_the_adminer_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = ensure_passwords(tmp_path)
    monkeypatch.setenv("SML_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SML_POSTGRES_PORT", "15432")
    result = runner.invoke(app, ["stack", "credentials", "adminer", "--json"])
    assert result.exit_code == 0, result.output
    login = json.loads(result.output)
    assert login["username"] == APP_ROLE
    assert login["password"] == passwords[APP_ROLE]
    assert login["server"].endswith(":15432")
    assert login["database"] == Settings().database
    text = runner.invoke(app, ["stack", "credentials"]).output
    assert f"password:  {passwords[APP_ROLE]}" in text


def test_csv_records_keeps_the_rows_that_can_be_listings(tmp_path: Path) -> None:
    good = generate_listing_records(5, seed=3)
    names = [c.name for c in LISTING_COLUMNS]
    lines = [",".join(names)]
    lines += [",".join(str(row[n]) for n in names) for row in good]
    lines.append(",".join(["Focus", "twenty", *["1"] * (len(names) - 2)]))  # year unparseable
    path = tmp_path / "mine.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    records, report = csv_records(path)
    assert len(records) == 5
    assert [r["model"] for r in records] == [r["model"].strip() for r in good]
    assert "read 6 rows, kept 5, dropped 1" in report
    first_two, _ = csv_records(path, rows=2)
    assert first_two == records[:2]


@pytest.mark.parametrize("args", [["--interval", "0"], []])
def test_connectors_watch_refuses_an_interval_of_zero(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SML_CONNECTOR_CHECK_INTERVAL_S", "0")
    result = runner.invoke(app, ["connectors", "watch", *args])
    assert result.exit_code == 1
    assert "needs an interval above 0" in result.output


REPORTS = [
    ["train"], ["evaluate"], ["bridge"], ["evaluator"], ["learn"], ["monitor"], ["load"],
    ["explain"], ["bench"], ["stack", "status"], ["stack", "credentials"],
    ["connectors", "apply"], ["connectors", "status"], ["model", "list"],
    ["model", "describe"], ["experiment", "status"],
]  # fmt: skip


@pytest.mark.parametrize("path", REPORTS, ids=" ".join)
def test_every_command_that_prints_a_report_takes_json(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output


def test_a_report_is_a_table_for_people_and_json_with_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streaming_ml.cli.app import print_report

    report = {"tag": "m:1", "metrics": {"rmse": 1234.5, "n": 3}, "tasks": ["RUNNING"]}
    print_report(report, as_json=True)
    assert json.loads(capsys.readouterr().out) == report
    print_report(report, as_json=False)
    table = capsys.readouterr().out
    for text in ("tag", "m:1", "metrics.rmse", "1,234", "metrics.n", "tasks", "RUNNING"):
        assert text in table


def test_stack_status_exits_one_when_a_component_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SML_STATE_DIR", str(tmp_path))
    result = runner.invoke(app, ["stack", "status", "--json"])
    assert result.exit_code == 1, result.output
    assert {info["state"] for info in json.loads(result.stdout).values()} == {"stopped"}


def test_bench_check_targets_exits_three_when_a_target_is_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import streaming_ml.bench

    targets = {
        "latency_ms.p50": {"target": "<= 50", "measured": 49.0, "met": True},
        "sustained_rows_per_s": {"target": ">= 10000", "measured": 5000.0, "met": False},
        "predict_ms.p50": {"target": "<= 2", "measured": None, "met": None},
    }
    monkeypatch.setattr(streaming_ml.bench, "run_bench", lambda *_a, **_k: {"targets": targets})
    assert runner.invoke(app, ["bench", "--quick"]).exit_code == 0
    checked = runner.invoke(app, ["bench", "--quick", "--check-targets"])
    assert checked.exit_code == 3
    assert "targets missed: sustained_rows_per_s" in checked.output
    targets["sustained_rows_per_s"]["met"] = True
    assert runner.invoke(app, ["bench", "--quick", "--check-targets"]).exit_code == 0


def test_every_short_option_has_a_long_form() -> None:
    def commands(group: click.Command, path: str) -> typing.Iterator[tuple[str, click.Command]]:
        yield path, group
        if isinstance(group, click.Group):
            for name, command in group.commands.items():
                yield from commands(command, f"{path} {name}")

    short_only = [
        f"{path}: {'/'.join(param.opts)}"
        for path, command in commands(typer.main.get_command(app), "streaming-ml")
        for param in command.params
        if isinstance(param, click.Option)
        and not any(opt.startswith("--") for opt in [*param.opts, *param.secondary_opts])
    ]
    assert short_only == []
    logs = runner.invoke(app, ["stack", "logs", "--help"]).output
    assert "--lines" in logs and "-n" in logs
