"""The bench's CPU account: processes put in components, a short-lived one counted."""

from __future__ import annotations

import subprocess
import sys

from streaming_ml.bench.cpu import CpuSampler, cpu_note

# Busy for 0.6 s of CPU, then idle long enough for a sample to see it all before it exits
# (the CPU a process uses after its last sample is not counted).
BUSY = (
    "import time\nend = time.process_time() + 0.6\n"
    "while time.process_time() < end: pass\ntime.sleep(0.3)"
)


def test_a_bridge_that_starts_and_ends_within_the_run_is_counted() -> None:
    with CpuSampler(interval_s=0.05) as sampler:
        # argv after -c makes the command line read like `streaming_ml ... bridge`.
        subprocess.run([sys.executable, "-c", BUSY, "streaming_ml", "bridge"], check=True)
    summary = sampler.summary()
    used = summary["cores_by_component"]["bridge"] * summary["wall_s"]
    # 0.6 s of CPU, give or take one sampling interval and the interpreter's start-up.
    assert 0.45 <= used <= 0.9, summary
    assert "load_generator" not in summary["cores_by_component"]
    assert 0 < summary["machine_busy_share"] <= 1


def test_cpu_note_names_the_busiest_components_first() -> None:
    summary = {
        "cores": 2, "machine_busy_share": 0.97,
        "cores_by_component": {"postgres": 0.2, "bridge": 0.95, "connect": 0.4, "kafka": 0.1,
                               "service": 0.3},
    }  # fmt: skip
    assert cpu_note(summary) == (
        "97% of 2 cores busy; cores used: bridge 0.95, connect 0.40, service 0.30, postgres 0.20"
    )
