"""The docs stay true: every command they show parses against the real command tree, every
`make` target exists, every SML_* variable is a setting (or a documented compose/test
variable), and no example moves a listener onto another component's default port."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.core import TyperGroup

from streaming_ml.cli import app
from streaming_ml.config import REPO_ROOT, Settings

PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "SECURITY.md", *REPO_ROOT.glob("docs/*.md")])
# Variables the docs name that are not Settings: compose's password variables, the test
# suite's switches, the dev compose's and the image build's own.
NOT_SETTINGS = {
    "SML_PG_APP_PASSWORD",
    "SML_PG_READER_PASSWORD",
    "SML_PG_REGISTRY_PASSWORD",
    "SML_PG_SINK_PASSWORD",
    "SML_PG_SOURCE_PASSWORD",
    "SML_TEST_REUSE_STACK",
    "SML_DEV_UID",
    "SML_DEV_DATA_DIR",
    "SML_DATA_CSV",
    # docker/build-images.sh's own switches.
    "SML_BASE_PULL",
    "SML_COMPOSE_NETWORK",
}
# A command line: optional prompt and VAR=value assignments, then the command itself.
COMMAND = re.compile(
    r"^(?:\$ )?(?:[A-Z_][A-Z0-9_]*=\S+ )*(?:\.venv/bin/|docker compose exec \S+ )?"
    r"streaming-ml((?: [^|&;#]*)?)$"
)
# A template's blanks: <tag>, TAG, ID, N, R·D, ..., [optional]
PLACEHOLDER = re.compile(r"<[^>]*>|(?<![-\w])[A-Z][A-Z_·]*(?![\w])|\.\.\.|…|\[")


def pages() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        yield page, page.read_text()


def shown_commands() -> Iterator[tuple[str, str]]:
    """(where, command) for every `streaming-ml ...` in code blocks and inline code; an
    inline one is marked, since prose may name a command without its arguments."""
    for page, text in pages():
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
        inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
        for snippet, kind in [(b, "") for b in blocks] + [(i, " (inline)") for i in inline]:
            for line in snippet.replace("\\\n", " ").splitlines():
                line = re.split(r" [&|;#] ?| &$|  # ", line.strip())[0].strip()
                match = COMMAND.match(line)
                if match and match.group(1).strip():
                    where = f"{page.relative_to(REPO_ROOT)}{kind}: {line}"
                    yield where, match.group(1).strip()


def resolve(args: list[str]) -> tuple[Any, list[str], list[str]]:
    """The command the words name, the words that name it, and the rest."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    while isinstance(command, TyperGroup) and args and not args[0].startswith("-"):
        sub = command.commands.get(args[0])
        if sub is None:
            pytest.fail(f"no command {' '.join(['streaming-ml', *path, args[0]])!r}")
        command, path, args = sub, [*path, args[0]], args[1:]
    return command, path, args


COMMANDS = sorted(set(shown_commands()))


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[c[0][:90] for c in COMMANDS])
def test_every_command_shown_parses(where: str, args: str) -> None:
    # A quoted value (an SQL statement, maybe going on over the next lines) is one word.
    args = re.sub(r"\"[^\"]*(?:\"|$)|'[^']*(?:'|$)", "quoted", args)
    if PLACEHOLDER.search(args):
        # A template (`model describe <tag>`): the words before the placeholder must
        # still name a command.
        args = PLACEHOLDER.split(args)[0]
        words = [w for w in shlex.split(args) if not w.startswith("-")]
        command, _, rest = resolve(words)
        assert not [w for w in rest if not w.startswith("-")] or command.params, where
        return
    words = shlex.split(args)
    command, path, rest = resolve(words)
    if "--help" in rest or isinstance(command, TyperGroup):
        return
    try:
        command.make_context(" ".join(["streaming-ml", *path]), rest)
    except typer.Exit:
        pass  # an eager option such as --version did its job
    except Exception as error:  # typer's bundled click raises its own usage errors
        if not hasattr(error, "format_message"):
            raise
        message = error.format_message()
        if "(inline)" in where and message.startswith("Missing argument"):
            return  # prose naming the command, e.g. `streaming-ml explain`
        pytest.fail(f"{where}\n  -> {message}")


def test_every_make_target_shown_exists() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", makefile, flags=re.MULTILINE))
    missing = []
    for page, text in pages():
        for target in re.findall(r"(?:^|`|\$ )make ([a-z][\w-]*)", text, flags=re.MULTILINE):
            if target not in targets:
                missing.append(f"{page.relative_to(REPO_ROOT)}: make {target}")
    assert not missing, missing


def test_every_variable_named_is_a_setting() -> None:
    settings = {f"SML_{name.upper()}" for name in Settings.model_fields}
    unknown = []
    for page, text in pages():
        for name in sorted(set(re.findall(r"\bSML_[A-Z0-9_]*[A-Z0-9]\b", text))):
            if name not in settings and name not in NOT_SETTINGS:
                unknown.append(f"{page.relative_to(REPO_ROOT)}: {name}")
    assert not unknown, unknown


def default_ports() -> dict[str, int]:
    return {
        f"SML_{name.upper()}": int(field.default)
        for name, field in Settings.model_fields.items()
        if name.endswith("_port") and isinstance(field.default, int)
    }


def test_no_example_moves_a_listener_onto_another_components_port() -> None:
    ports = default_ports()
    clashes = []
    for page, text in pages():
        for name, value in re.findall(r"\b(SML_\w+_PORT)=(\d+)", text):
            owners = [other for other, port in ports.items() if port == int(value)]
            if owners and owners != [name]:
                clashes.append(f"{page.relative_to(REPO_ROOT)}: {name}={value} is {owners[0]}")
    assert not clashes, clashes


def test_documented_port_defaults_are_the_settings() -> None:
    ports = default_ports()
    wrong = []
    for page, text in pages():
        for name, value in re.findall(r"`?(SML_\w+_PORT)`?,? \(?default:? `?(\d+)", text):
            if name in ports and ports[name] != int(value):
                wrong.append(f"{page.relative_to(REPO_ROOT)}: {name} default {value}")
    assert not wrong, wrong


# Ports of ours that are not settings: JupyterLab in docker-compose-dev.yml.
OTHER_PORTS = {8888}


def test_local_urls_use_a_default_port_or_one_the_page_sets() -> None:
    known = set(default_ports().values()) | OTHER_PORTS
    stray = []
    for page, text in pages():
        for line in text.splitlines():
            for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d{2,5})\b", line):
                if int(port) not in known and f"={port}" not in text:
                    stray.append(f"{page.relative_to(REPO_ROOT)}: {line.strip()[:100]}")
    assert not stray, stray


NUMBER_WORDS = {"both": 2, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def test_the_connectors_are_counted_as_many_as_there_are() -> None:
    """Prose that counts the connectors ("both connectors") goes stale when one is added:
    in the docs, the compose files and the code's help texts and comments."""
    count = len(Settings().connector_names)
    sources = [*REPO_ROOT.glob("docker-compose*.yml"), *(REPO_ROOT / "src").rglob("*.py")]
    wrong = [
        f"{page.relative_to(REPO_ROOT)}: {match.group(0)!r}"
        for page, text in [*pages(), *((path, path.read_text()) for path in sources)]
        for match in re.finditer(r"\b(both|two|three|four|five|six|seven) connectors\b", text, re.I)
        if NUMBER_WORDS[match.group(1).lower()] != count
    ]
    assert not wrong, f"the pipeline has {count} connectors: {wrong}"


def test_the_roles_table_names_the_tables_each_role_is_granted() -> None:
    """docs/stack.md's Roles table against the GRANTs of postgres/02-schema.sql."""
    granted: dict[str, set[str]] = {}
    schema = (REPO_ROOT / "postgres" / "02-schema.sql").read_text()
    for table, role in re.findall(r"^GRANT [A-Z, ]+ ON public\.(\w+) TO (\w+);$", schema, re.M):
        granted.setdefault(role, set()).add(table)
    documented = {
        role: set(re.findall(r"`(car_\w+)`", rights))
        for role, rights in re.findall(
            r"^\| `(\w+)` \| ([^|]+) \|", (REPO_ROOT / "docs" / "stack.md").read_text(), re.M
        )
    }
    assert granted, "no GRANT read"
    for role, tables in granted.items():
        assert documented.get(role) == tables, role
