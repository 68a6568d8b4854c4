"""The pipeline runs: latency, throughput steps, bridge only and re-pricing, each timed from every
row's commit to its prediction row; starts what is not running and stops it again.

The runs share one session (its environment, seed and started bridges), so each job's
module adds its runs to that session and ``Bench`` is all of them together.
"""

from __future__ import annotations

from streaming_ml.bench.bridge_only import BridgeOnlyRuns
from streaming_ml.bench.reprice import RepriceRuns
from streaming_ml.bench.timed import TimedRuns


class Bench(TimedRuns, BridgeOnlyRuns, RepriceRuns):
    """One bench session: environment, runs, and the collected figures."""
