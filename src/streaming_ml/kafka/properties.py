"""Java-style ``.properties`` files: the format Kafka's own tools and most Kafka
documentation use for client settings, so a file written for ``kafka-console-consumer
--command-config`` works here too (librdkafka knows the same names for the common ones)."""

from __future__ import annotations

from pathlib import Path

from streaming_ml.errors import ConfigError


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` or ``key: value`` lines; ``#`` and ``!`` start comments; a line
    ending in a backslash continues on the next one."""
    props: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        separators = [i for i in (line.find("="), line.find(":")) if i >= 0]
        if not separators:
            props[line] = ""
            continue
        cut = min(separators)
        props[line[:cut].strip()] = line[cut + 1 :].strip()
    return props


def read_properties(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the properties file {path}: {error}") from error
    return parse_properties(text)
