"""What the bench runs and how hard: ``BenchOptions`` and the commit-size constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streaming_ml.errors import BenchError

InsertMode = Literal["batched", "single"]

# Batched inserts commit this often by default (rows per commit = rate / this):
# small enough that a row rarely waits for its transaction, large enough that
# the load generator is not bound by per-commit round trips.
BATCHED_COMMITS_PER_S = 100
# Throughput steps commit less often (rate/20 rows per commit): latency is measured from
# each row's commit, so bigger transactions cost nothing there, and they keep the single
# generator connection (one fsync per commit) from being the limit at high rates.
STEP_COMMITS_PER_S = 20
# Rows per transaction when pre-filling the change topic as fast as possible.
PREFILL_BATCH_ROWS = 1_000


@dataclass(frozen=True)
class BenchOptions:
    """What to run and how hard; ``quick()`` is the smoke profile (< 60 s of runs)."""

    profile: str = "full"
    rate: float = 1_000.0
    duration_s: float = 30.0
    insert_mode: InsertMode = "batched"
    batch_rows: int | None = None  # rows per transaction in batched mode (None: rate/100)
    warmup_s: float = 5.0  # at the latency run's rate
    step_rates: tuple[float, ...] = (
        1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 12_000, 16_000,
    )  # fmt: skip
    step_duration_s: float = 15.0
    prefill_rows: int = 50_000
    bridges: int = 2  # bridge-only run: also time this many bridges in one group (1: only one)
    stream_bridges: int = 1  # bridges in the group of the latency run and throughput steps
    one_row_requests: int = 200
    thousand_row_requests: int = 50
    concurrency: int = 8
    concurrent_requests: int = 4_000
    concurrent_max_s: float = 15.0
    drain_timeout_s: float = 120.0
    # The cost of explanations (SML_BRIDGE_EXPLAIN): explained /predict_batch requests of
    # 500 records (seconds each, so fewer than the plain ones), and a bridge-only round
    # with explanations on over the first rows of the pre-filled range.
    explained_requests: int = 10
    explained_bridge_rows: int = 5_000
    run_serving: bool = True
    run_latency: bool = True
    run_throughput: bool = True
    run_explain: bool = True
    # The re-pricing backfill (``bench/reprice.py``): this many priced rows touched again.
    run_reprice: bool = True
    reprice_rows: int = 20_000
    # The reference design beside us (``bench/baseline.py``): one /predict per event. At a
    # few ms per event it drains only ``baseline_rows`` of the pre-fill (off in ``quick``).
    run_baseline: bool = True
    baseline_rows: int = 5_000
    # The throughput steps again on a stack of the bench's own with this many Kafka nodes
    # (``bench/brokers.py``); None: no comparison.
    compare_kafka_nodes: int | None = None
    seed: int = 5_000

    @classmethod
    def quick(cls) -> BenchOptions:
        return cls(
            profile="quick", duration_s=5.0, warmup_s=1.0, step_rates=(2_000,),
            step_duration_s=3.0, prefill_rows=2_000, one_row_requests=100,
            thousand_row_requests=10, concurrency=4, concurrent_requests=400,
            concurrent_max_s=2.0, drain_timeout_s=60.0, explained_requests=3,
            explained_bridge_rows=500, baseline_rows=500, run_baseline=False,
            reprice_rows=2_000,
        )  # fmt: skip

    @property
    def explained_rows(self) -> int:
        """Rows the bridge-only round with explanations drains: a part of the pre-fill."""
        return min(self.explained_bridge_rows, self.prefill_rows)

    @property
    def baseline_drained(self) -> int:
        """Events the baseline consumer drains: a part of the pre-fill."""
        return min(self.baseline_rows, self.prefill_rows)

    @property
    def bridge_counts(self) -> tuple[int, ...]:
        """Bridge processes per bridge-only round: one, then ``bridges`` (once each)."""
        return tuple(dict.fromkeys((1, self.bridges)))

    def rows_per_commit(self, rate: float, commits_per_s: int = BATCHED_COMMITS_PER_S) -> int:
        if self.insert_mode == "single":
            return 1
        if self.batch_rows:
            return self.batch_rows
        return max(1, round(rate / commits_per_s))

    def check(self) -> None:
        problems = []
        if self.rate <= 0:
            problems.append(f"--rate must be positive, got {self.rate}")
        if self.duration_s <= 0:
            problems.append(f"--duration must be positive, got {self.duration_s}")
        if self.insert_mode not in ("batched", "single"):
            problems.append(f"--insert-mode must be batched or single, got {self.insert_mode}")
        if self.batch_rows is not None and self.batch_rows < 1:
            problems.append(f"--batch must be at least 1, got {self.batch_rows}")
        if any(r <= 0 for r in self.step_rates):
            problems.append(f"--steps must all be positive, got {self.step_rates}")
        if self.prefill_rows < 1 or self.step_duration_s <= 0:
            problems.append("--prefill-rows and --step-duration must be positive")
        if self.bridges < 1:
            problems.append(f"--bridges must be at least 1, got {self.bridges}")
        if self.stream_bridges < 1:
            problems.append(f"--stream-bridges must be at least 1, got {self.stream_bridges}")
        if self.concurrency < 1:
            problems.append(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.explained_requests < 1 or self.explained_bridge_rows < 1:
            problems.append(
                f"--explained-rows must be at least 1, got {self.explained_bridge_rows} "
                f"(and {self.explained_requests} explained requests)"
            )
        if self.compare_kafka_nodes is not None:
            if self.compare_kafka_nodes < 1:
                problems.append(
                    f"--compare-kafka-nodes must be at least 1, got {self.compare_kafka_nodes}"
                )
            if not self.run_throughput:
                problems.append(
                    "--compare-kafka-nodes compares throughput steps: drop --skip-throughput"
                )
        if problems:
            raise BenchError("; ".join(problems))
