"""The bench's report: machine facts, component versions and settings for the JSON
document, the summary table and the PNG plot."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import psycopg2
import requests
from rich.console import Console
from rich.table import Table

from streaming_ml.bench.hops import HOPS
from streaming_ml.bench.stats import STAGES, RowTimes
from streaming_ml.config import Settings

# Python libraries whose versions go into the report.
LIBRARIES = (
    "bentoml", "xgboost", "scikit-learn", "pandas", "numpy", "confluent-kafka",
    "psycopg2-binary", "requests", "fastavro", "pydantic", "matplotlib",
)  # fmt: skip


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return facts


def component_versions(settings: Settings, dsn: str) -> dict[str, Any]:
    """Versions of the Python libraries and of every running component (best effort:
    a component that does not answer is reported as such, not guessed)."""

    versions: dict[str, Any] = {"python_libraries": {}}
    for name in LIBRARIES:
        try:
            versions["python_libraries"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions["python_libraries"][name] = None
    versions["librdkafka"] = confluent_kafka.libversion()[0]

    def get(url: str) -> Any:
        try:
            return requests.get(url, timeout=5).json()
        except (requests.RequestException, ValueError):
            return None

    connect_info = get(settings.connect_url + "/") or {}
    versions["kafka_connect"] = connect_info.get("version")
    plugins = get(settings.connect_url + "/connector-plugins") or []
    versions["connector_plugins"] = {
        p.get("class", "?").rsplit(".", 1)[-1]: p.get("version")
        for p in plugins
        if "debezium" in p.get("class", "")
    }
    registry = get(f"{settings.registry_core_url}/system/info")
    versions["apicurio_registry"] = (registry or {}).get("version")
    try:
        with (
            contextlib.closing(psycopg2.connect(dsn, connect_timeout=5)) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            assert row is not None, "SHOW answers one row"
            versions["postgres"] = row[0]
    except Exception as error:  # reported, not fatal: the figures do not depend on it
        versions["postgres"] = f"unknown ({type(error).__name__})"
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=15)
        versions["java"] = (java.stderr or java.stdout).splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        versions["java"] = None
    model_info = get(settings.prediction_url.rstrip("/") + "/model_info")
    if model_info is None:
        with contextlib.suppress(requests.RequestException, ValueError):
            answer = requests.post(settings.prediction_url.rstrip("/") + "/model_info", timeout=5)
            model_info = answer.json()
    versions["model_tag"] = (model_info or {}).get("tag")
    return versions


def pipeline_settings(settings: Settings) -> dict[str, Any]:
    """The knobs that shape the figures: bridge batching and both connector configs."""
    configs = {}
    for name in settings.connector_names:
        try:
            configs[name] = requests.get(
                f"{settings.connect_url}/connectors/{name}/config", timeout=5
            ).json()
        except (requests.RequestException, ValueError):
            configs[name] = None
    for config in configs.values():
        if isinstance(config, dict):
            for key in list(config):
                if "password" in key.lower():
                    config[key] = "***"
    return {
        "bridge_batch_max_events": settings.batch_max_events,
        "bridge_batch_linger_ms": settings.batch_linger_ms,
        "request_timeout_s": settings.request_timeout_s,
        "bridge_explain": settings.bridge_explain,
        "connectors": configs,
    }


def print_summary(doc: Mapping[str, Any], console: Console) -> None:

    table = Table(title=f"streaming-ml bench ({doc['bench']['profile']})")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met", justify="center")
    for key, entry in doc.get("targets", {}).items():
        met = {True: "[green]yes", False: "[red]no", None: "—"}[entry["met"]]
        table.add_row(key, _figure(entry["measured"]), entry["target"], met)
        if key == "bridge_rows_per_s":
            for figure, shown in bridge_process_rows(doc) + explanation_rows(doc):
                table.add_row(figure, shown, "—", "—")
    console.print(table)
    reprice = doc.get("reprice_run")
    if reprice:
        console.print(
            f"re-pricing: {_figure(reprice['reprice_rows_per_s'])} rows/s over "
            f"{reprice['touched']:,} rows (first touch to last row written; touches "
            f"{_figure(reprice['touch_rows_per_s'])} rows/s), beside the stream's sustained "
            f"{_figure(doc.get('max_sustained_rows_per_s'))} rows/s"
        )
    steps = doc.get("bridge_steps_us_per_event")
    if steps:
        steps_table = Table(title=f"bridge cost per event (1 bridge, {steps['events']:,} events)")
        steps_table.add_column("step")
        steps_table.add_column("µs per event", justify="right")
        steps_table.add_column("share", justify="right")
        for row in bridge_step_rows(steps):
            steps_table.add_row(*row)
        console.print(steps_table)
    hops = doc.get("commit_to_kafka_hops")
    if hops and hops.get("rows"):
        hops_table = Table(title=f"commit_to_kafka, hop by hop ({hops['rows']:,} rows)")
        hops_table.add_column("hop")
        for column in ("p50 ms", "mean ms", "p99 ms", "share of mean"):
            hops_table.add_column(column, justify="right")
        for hop_row in hop_rows(hops):
            hops_table.add_row(*hop_row)
        console.print(hops_table)
    by_nodes = doc.get("max_sustained_rows_per_s_by_kafka_nodes")
    if by_nodes:
        console.print(
            "max sustained rows/s by Kafka nodes: "
            + ", ".join(f"{nodes}: {_figure(rate)}" for nodes, rate in by_nodes.items())
        )
    ratio = doc.get("bridge_vs_baseline_rows_per_s")
    if ratio is not None:
        console.print(
            f"baseline (one POST /predict per event): {_figure(doc.get('baseline_rows_per_s'))} "
            f"rows/s; the bridge does {ratio:g}x that"
        )
    for error in doc.get("errors", []):
        console.print(f"[red]error:[/] {error}")


def hop_rows(hops: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(hop, p50, mean, p99, share) rows of ``commit_to_kafka_hops``."""
    rows = []
    for name, _ in HOPS:
        figures = hops["hops_ms"][name]
        share = hops["share_of_mean"].get(name)
        rows.append((
            name, _figure(figures["p50"]), _figure(figures["mean"]), _figure(figures["p99"]),
            f"{share:.0%}" if isinstance(share, int | float) else "—",
        ))  # fmt: skip
    return rows


def _figure(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, int | float) else "—"


def bridge_process_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(figure, measured) rows of the bridge-only figure with more than one process,
    each with its speed-up over one process when both were measured; the one-process
    figure is ``bridge_rows_per_s``, which has its own (target) row."""
    by_processes = doc.get("bridge_rows_per_s_by_processes") or {}
    one = by_processes.get("1")
    rows = []
    for processes, value in sorted(by_processes.items(), key=lambda item: int(item[0])):
        if processes == "1":
            continue
        figure = f"bridge_rows_per_s, {processes} processes"
        if isinstance(value, int | float) and isinstance(one, int | float) and one > 0:
            figure += f" ({value / one:.2f}x of 1)"
        rows.append((figure, _figure(value)))
    return rows


def explanation_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(figure, measured) rows of what explanations cost: /predict_batch of 500 records
    without and with them, and the bridge-only rate with them on, each with its factor
    against the figure without explanations when both were measured."""
    plain = doc.get("predict_batch_500_records_ms_p50")
    explained = doc.get("predict_batch_500_records_explained_ms_p50")
    bridge = doc.get("bridge_rows_per_s")
    bridge_explained = doc.get("bridge_explained_rows_per_s")
    rows = []
    if explained is not None or bridge_explained is not None:
        rows.append(("predict_batch_500_records_ms_p50", _figure(plain)))
    if explained is not None:
        figure = "predict_batch_500_records_explained_ms_p50"
        if _positive(explained) and _positive(plain):
            figure += f" ({explained / plain:.0f}x)"
        rows.append((figure, _figure(explained)))
    if bridge_explained is not None:
        figure = "bridge_explained_rows_per_s"
        if _positive(bridge_explained) and _positive(bridge):
            figure += f" ({bridge_explained / bridge:.2f}x of off)"
        rows.append((figure, _figure(bridge_explained)))
    return rows


def bridge_step_rows(steps: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(step, µs per event, share) rows of one bridge's ``bridge_steps_us_per_event``,
    then their total and, when measured, the drain's wall time per event to hold it
    against."""
    shares = steps["share_pct"]
    rows = [
        (step, _figure(us), f"{shares[step]:.1f} %")
        for step, us in steps["steps_us_per_event"].items()
    ]
    rows.append(("total", _figure(steps["total_us_per_event"]), "100.0 %"))
    if "wall_us_per_event" in steps:
        rows.append(("wall time of the drain", _figure(steps["wall_us_per_event"]), "—"))
    return rows


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def _second_bins(t_s: np.ndarray, values: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile ``q`` of ``values`` per whole second of ``t_s``."""
    seconds = np.floor(t_s).astype(int)
    xs, ys = [], []
    for sec in np.unique(seconds):
        chosen = values[seconds == sec]
        if chosen.size:
            xs.append(sec + 0.5)
            ys.append(np.percentile(chosen, q))
    return np.asarray(xs), np.asarray(ys)


def plot_bench(doc: Mapping[str, Any], series: Mapping[str, Any], path: Path) -> None:
    """One PNG: latency over time, per-stage percentiles, throughput steps, serving, and
    below them the bridge's cost per event and step."""

    matplotlib.use("Agg")

    fig = plt.figure(figsize=(15, 17), dpi=100)
    grid = fig.add_gridspec(4, 2, height_ratios=(1, 1, 0.55, 0.55))
    axes = [[fig.add_subplot(grid[row, col]) for col in range(2)] for row in range(2)]
    profile = doc["bench"]["profile"]
    fig.suptitle(
        f"streaming-ml bench ({profile}) — {doc['bench'].get('started_at', '')[:19]} UTC, "
        f"{doc['machine'].get('cpu_count')} cores", fontsize=13,
    )  # fmt: skip

    ax = axes[0][0]
    latency = series.get("latency")
    if latency is not None and len(latency["times"]):
        times: RowTimes = latency["times"]
        start = times.source_ts.min()
        t_s = (times.source_ts - start) / 1000
        e2e = times.stages()["end_to_end"]
        ax.scatter(t_s, e2e, s=3, alpha=0.25, color="tab:blue", label="each row")
        for q, colour in ((50, "tab:green"), (99, "tab:red")):
            xs, ys = _second_bins(t_s, e2e, q)
            ax.plot(xs, ys, color=colour, linewidth=2, label=f"p{q} per second")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the first commit")
        ax.set_ylabel("commit → prediction row written (ms)")
        run = doc.get("latency_run", {})
        ax.set_title(
            f"End-to-end latency at {run.get('offered_rows_per_s', 0):g} rows/s "
            f"({run.get('insert_mode')}, {run.get('rows_per_commit')} rows/commit)"
        )
        if latency["lag"]:
            lag_t = (np.array([t for t, _ in latency["lag"]]) - start) / 1000
            twin = ax.twinx()
            twin.plot(lag_t, [v for _, v in latency["lag"]], color="tab:gray",
                      linestyle="--", label="consumer lag")  # fmt: skip
            twin.set_ylabel("consumer lag (events)", color="tab:gray")
            twin.legend(loc="upper right")
        ax.legend(loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    else:
        _empty(ax, "latency run not measured")

    ax = axes[0][1]
    stages = doc.get("stages")
    if stages:
        names = [name for name, _ in STAGES if stages.get(name, {}).get("count")]
        # Floored at 0.01 ms: the axis is logarithmic.
        _grouped_barh(
            ax, names, {n: stages[n] for n in names},
            (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")), floor=0.01,
        )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_title("Latency per stage (latency run)")
        low, high = ax.get_xlim()
        ax.set_xlim(low, high * 4)  # room for the value labels and the legend
        ax.legend(loc="upper right")
        ax.grid(True, axis="x", which="both", alpha=0.3)
    else:
        _empty(ax, "no stage breakdown")

    ax = axes[1][0]
    steps = [s for s in doc.get("throughput_steps") or [] if "commit_rows_per_s" in s]
    if steps:
        x = np.arange(len(steps))
        offered = [s["offered_rows_per_s"] for s in steps]
        ax.bar(x - 0.2, offered, width=0.4, color="tab:gray", label="offered")
        ax.bar(x + 0.2, [s["commit_rows_per_s"] or 0 for s in steps], width=0.4,
               color=["tab:green" if s["kept_up"] else "tab:red" for s in steps],
               label="committed (green: kept up)")  # fmt: skip
        ax.set_xticks(x, [f"{r:g}" for r in offered])
        ax.set_xlabel("offered rate (rows/s)")
        ax.set_ylabel("rows/s")
        by_processes = doc.get("bridge_rows_per_s_by_processes") or {}
        if not by_processes and doc.get("bridge_rows_per_s"):
            by_processes = {"1": doc["bridge_rows_per_s"]}  # a document from before --bridges
        styles = iter((":", "-.", "--"))
        for processes, bridge in sorted(by_processes.items(), key=lambda item: int(item[0])):
            if bridge:
                label = f"bridge only, {processes} process{'' if processes == '1' else 'es'}"
                style = next(styles, ":")
                ax.axhline(
                    bridge, color="tab:purple", linestyle=style, label=f"{label} {bridge:,.0f}"
                )
        twin = ax.twinx()
        twin.plot(x, [s["latency_ms"]["p99"] for s in steps], "o-", color="tab:red",
                  label="p99 latency")  # fmt: skip
        twin.set_ylabel("p99 commit → row (ms)", color="tab:red")
        best = doc.get("max_sustained_rows_per_s")
        ax.set_title(f"Throughput steps — max sustained {best or 0:,.0f} rows/s")
        ax.legend(loc="upper left")
        ax.grid(True, axis="y", alpha=0.3)
    else:
        _empty(ax, "throughput steps not measured")

    ax = axes[1][1]
    serving = doc.get("serving")
    if serving:
        figures = [("predict_one_row_ms", "/predict 1 row"),
                 ("predict_1000_rows_ms", "/predict 1000 rows"),
                 ("predict_batch_500_records_ms", "/predict_batch 500")]  # fmt: skip
        conc = serving["concurrent_one_row"]
        rows = [(label, serving[key]) for key, label in figures]
        rows.append((f"1 row, {conc['threads']} threads", conc["latency_ms"]))
        x = np.arange(len(rows))
        for offset, (q, colour) in zip(
            (-0.27, 0.0, 0.27),
            ((50, "tab:green"), (95, "tab:orange"), (99, "tab:red")),
            strict=True,
        ):
            values = [r[f"p{q}"] or 0.0 for _, r in rows]
            ax.bar(x + offset, values, width=0.25, color=colour, label=f"p{q}")
            for xx, v in zip(x + offset, values, strict=True):
                ax.text(xx, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [label for label, _ in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale)")
        ax.set_title(f"Serving latency — {conc['requests_per_s']:,.0f} req/s with "
                     f"{conc['threads']} threads")  # fmt: skip
        ax.legend(loc="upper left")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    else:
        _empty(ax, "serving run not measured")

    _plot_bridge_steps(fig.add_subplot(grid[2, 0]), doc.get("bridge_steps_us_per_event"))
    _plot_hops(fig.add_subplot(grid[2, 1]), doc.get("commit_to_kafka_hops"))
    _plot_targets(fig.add_subplot(grid[3, 0]), doc.get("targets") or {})
    _plot_baseline(fig.add_subplot(grid[3, 1]), doc)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _plot_bridge_steps(ax: Any, steps: Mapping[str, Any] | None) -> None:
    if not steps:
        _empty(ax, "bridge steps not measured")
        return
    per_step = steps["steps_us_per_event"]
    y = np.arange(len(per_step))
    values = list(per_step.values())
    ax.barh(y, values, color="tab:blue")
    for yy, step, v in zip(y, per_step, values, strict=True):
        ax.text(v, yy, f" {v:,.1f} µs ({steps['share_pct'][step]:.0f} %)", va="center",
                fontsize=8)  # fmt: skip
    ax.set_yticks(y, list(per_step))
    ax.invert_yaxis()
    ax.set_xlabel("µs per event")
    low, high = ax.get_xlim()
    ax.set_xlim(low, high * 1.25)  # room for the value labels
    title = f"Bridge cost per event and step ({steps['events']:,} events, one bridge)\n"
    title += f"{steps['total_us_per_event']:,.1f} µs in all"
    if "wall_us_per_event" in steps:
        title += f"; drain wall time {steps['wall_us_per_event']:,.1f} µs per event"
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def _grouped_barh(
    ax: Any,
    names: list[str],
    figures: Mapping[str, Mapping[str, Any]],
    series: tuple[tuple[str, str], ...],
    floor: float = 0.0,
) -> None:
    """One row per name, a labelled bar per (figure key, colour) of ``series``."""
    y = np.arange(len(names))
    offsets = (np.arange(len(series)) - (len(series) - 1) / 2) * 0.27
    for offset, (key, colour) in zip(offsets, series, strict=True):
        values = [max(figures[n][key] or 0.0, floor) for n in names]
        ax.barh(y + offset, values, height=0.25, color=colour, label=key)
        for yy, v in zip(y + offset, values, strict=True):
            ax.text(v, yy, f" {v:.1f}", va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()


def _plot_hops(ax: Any, hops: Mapping[str, Any] | None) -> None:
    if not hops or not hops.get("rows"):
        _empty(ax, "commit_to_kafka hops not measured")
        return
    labels = {"commit_to_debezium": "commit → Debezium read",
              "debezium_to_kafka": "Debezium read → broker"}  # fmt: skip
    _grouped_barh(
        ax, list(labels.values()), {labels[n]: hops["hops_ms"][n] for n in labels},
        (("p50", "tab:green"), ("mean", "tab:blue"), ("p99", "tab:red")),
    )  # fmt: skip
    ax.set_xlabel("ms")
    jmx = (hops.get("connect_jmx") or {}).get("figures") or {}
    poll = jmx.get("kafka_connect_source_task_metrics_poll_batch_avg_time_ms")
    queue = jmx.get("kafka_producer_producer_metrics_record_queue_time_avg")
    detail = (
        f"\nConnect JMX: {poll:.1f} ms per poll of Debezium's queue, "
        f"{queue:.1f} ms in the producer's queue"
        if poll is not None and queue is not None
        else ""
    )
    ax.set_title(f"commit_to_kafka hop by hop ({hops['rows']:,} rows){detail}", fontsize=10)
    low, high = ax.get_xlim()
    ax.set_xlim(low, high * 1.45)  # room for the value labels and the legend
    ax.legend(loc="upper right")
    ax.grid(True, axis="x", alpha=0.3)


def _plot_targets(ax: Any, targets: Mapping[str, Mapping[str, Any]]) -> None:
    if not targets:
        _empty(ax, "no targets")
        return
    rows = [
        [key, _figure(entry["measured"]), entry["target"],
         {True: "yes", False: "no", None: "—"}[entry["met"]]]
        for key, entry in targets.items()
    ]  # fmt: skip
    table = ax.table(
        cellText=rows, colLabels=["figure", "measured", "target", "met"], loc="center",
        cellLoc="left", colWidths=[0.5, 0.18, 0.18, 0.1],
    )  # fmt: skip
    table.scale(1, 1.5)
    for (row, col), cell in table.get_celld().items():
        if row > 0 and col == 3:
            cell.set_facecolor({"yes": "#c8e6c9", "no": "#ffcdd2"}.get(rows[row - 1][3], "white"))
    ax.set_axis_off()
    ax.set_title("Targets")


def _plot_baseline(ax: Any, doc: Mapping[str, Any]) -> None:
    ours, theirs = doc.get("bridge_rows_per_s"), doc.get("baseline_rows_per_s")
    if not ours or not theirs:
        _empty(ax, "baseline not measured (bench --baseline)")
        return
    labels = ["baseline: one POST /predict per event", "bridge: micro-batches, transactions"]
    values = [theirs, ours]
    ax.barh([0, 1], values, color=["tab:gray", "tab:purple"])
    for yy, v in zip((0, 1), values, strict=True):
        ax.text(v, yy, f" {v:,.0f} rows/s", va="center", fontsize=9)
    ax.set_yticks([0, 1], labels)
    ax.set_xscale("log")
    ax.set_xlabel("rows/s drained from the change topic (log scale)")
    low, high = ax.get_xlim()
    ax.set_xlim(low, high * 3)
    ratio = doc.get("bridge_vs_baseline_rows_per_s")
    ax.set_title(f"The bridge against the reference design: {ratio:g}x" if ratio else "Baseline")
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_axis_off()
