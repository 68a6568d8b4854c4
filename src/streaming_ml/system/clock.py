"""Wall-clock time in the unit of every ``*_ts_ms`` field the pipeline writes."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, as Kafka and Debezium timestamps count them."""
    return int(time.time() * 1000)
