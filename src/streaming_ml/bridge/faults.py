"""Fault injection for tests: SIGKILL the bridge at an exact point of a given batch.

``SML_FAULT_KILL_AT=POINT:N`` kills the process at POINT of its N-th batch (1-based):

- ``priced``: the service answered, nothing of the batch produced yet;
- ``produced``: every record of the batch acknowledged by the brokers (inside the open
  transaction), its offsets not yet sent or committed.

Unset (the default) costs one ``None`` check per batch.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from streaming_ml.errors import ConfigError

logger = logging.getLogger(__name__)

POINTS = ("priced", "produced")


@dataclass(frozen=True)
class KillPoint:
    point: str
    batch: int

    @classmethod
    def parse(cls, spec: str | None) -> KillPoint | None:
        if not spec:
            return None
        point, _, batch = spec.partition(":")
        if point not in POINTS or not batch.isdigit() or int(batch) < 1:
            raise ConfigError(
                f"SML_FAULT_KILL_AT={spec!r}: use POINT:N with POINT one of "
                f"{', '.join(POINTS)} and N the batch number (1 = first)"
            )
        return cls(point, int(batch))

    def reached(self, point: str, batch: int) -> None:
        """Kill this process now if ``point`` of batch ``batch`` is the one."""
        if point == self.point and batch == self.batch:
            logger.warning("fault injection: SIGKILL", extra={"point": point, "batch": batch})
            os.kill(os.getpid(), signal.SIGKILL)
