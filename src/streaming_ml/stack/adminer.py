"""Adminer, the one-file database UI, served by PHP's built-in web server.

It lets a person insert a listing from a browser and watch its prediction appear.
Debian's ``adminer`` package provides the app, ``php-cli`` the server and
``php-pgsql`` the Postgres driver.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import requests

from streaming_ml.config import Settings
from streaming_ml.errors import StackError
from streaming_ml.stack import detached

NAME = "adminer"
DOCROOT = Path("/usr/share/adminer/adminer")
# The single-file build serves its own CSS/JS (``?file=functions.js``). The source tree in
# DOCROOT links them as ``../adminer/static/...``, which resolves outside the docroot and
# 404s; without functions.js every field of the "New item" form is inserted as NULL.
SINGLE_FILE = Path("/usr/share/adminer/adminer.php")


def installed() -> bool:
    return shutil.which("php") is not None and (DOCROOT / "index.php").exists()


def start(settings: Settings, run_as: detached.RunAs | None = None) -> int:
    php = shutil.which("php")
    if php is None or not installed():
        raise StackError(
            "adminer: PHP or Adminer is not installed. Run `streaming-ml stack install` "
            "(apt-get install adminer php-cli php-pgsql)."
        )
    argv = [php, "-S", f"{settings.host}:{settings.adminer_port}", "-t", str(DOCROOT)]
    if SINGLE_FILE.exists():
        argv.append(str(SINGLE_FILE))  # router script: every request runs the single file
    # PHP_CLI_SERVER_WORKERS > 1 keeps the UI responsive while a slow query runs.
    env = {"PHP_CLI_SERVER_WORKERS": "2"}
    return detached.start(
        NAME, argv, state_dir=settings.state_dir, env=env, cwd=DOCROOT, run_as=run_as
    )


def url(settings: Settings) -> str:
    return (
        f"http://{settings.host}:{settings.adminer_port}/?pgsql={settings.host}:"
        f"{settings.postgres_port}&username=cars_app&db={settings.database}"
    )


def ready(settings: Settings) -> bool:
    response = requests.get(f"http://{settings.host}:{settings.adminer_port}/", timeout=2)
    return response.status_code == 200 and "Adminer" in response.text
