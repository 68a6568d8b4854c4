"""The dashboard's collector: one thread reads every source once a round and keeps the
latest state of each panel and a short history of points for the charts.

Sources, and why each is read the way it is:

* Kafka's admin API: the change topic's end (rows captured), the bridge group's and the
  sink group's committed offsets (consumed, lag per partition), the groups' members
  (bridge replicas and their partitions) -- every replica counts, whoever runs it;
* three topic tails (``tail.TopicTail``): the predictions (priced rows and the latency
  sample, ``latency``), the DLQ (rate and latest reasons), the registry's log (aliases
  and promotion markers);
* the evaluation topics through ``evaluation.monitor.Monitor`` (accuracy per model and
  arm, drift, alerts), the same view ``streaming-ml monitor`` has;
* HTTP: each bridge's and the service's Prometheus text, the service's ``/readyz`` and
  ``/model_info``, Connect's status of every connector;
* Postgres: row counters of the predictions table (rows written), the latency
  sample's rows, and the latest re-pricing jobs (``datasets.reprice``).

A source that fails leaves its panel empty with the reason and the fix; the others go
on. The collector only reads: it joins no consumer group and commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
import requests

from streaming_ml.config import Settings
from streaming_ml.connect import client, commands
from streaming_ml.dashboard import scrape
from streaming_ml.dashboard.groups import GroupView
from streaming_ml.dashboard.latency import LatencySampler
from streaming_ml.dashboard.series import History, OffsetRate, Rates
from streaming_ml.dashboard.tail import TopicTail
from streaming_ml.datasets import reprice
from streaming_ml.errors import StackError, StreamingMLError
from streaming_ml.evaluation.monitor import Monitor
from streaming_ml.models import registry
from streaming_ml.schema import avro
from streaming_ml.stack import postgres_dsn
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 1.0
# Slow-changing sources are read less often than every round.
EVERY_S = {
    "connect": 2.0, "members": 3.0, "model_info": 2.0, "evaluation_retry": 10.0, "reprice": 2.0,
}  # fmt: skip
REPRICE_JOBS = 3
# Time the evaluation monitor may spend catching up per round (it starts at the
# beginning of the outcomes topic, which may be long).
MONITOR_BUDGET_S = 0.3
DLQ_RECENT = 20
REGISTRY_EVENTS = 12
MARKER_KINDS = ("claimed", "promoted", "rolled_back", "experiment_started", "experiment_stopped")


class Collector:
    """Reads the pipeline's state every ``settings.dashboard_refresh_s`` from a thread.

    ``bridge_metrics_urls``: the bridges whose ``/metrics`` to read (default: the one on
    ``SML_BRIDGE_METRICS_PORT``); replicas and partitions come from the consumer group,
    so replicas not listed here are still shown.
    """

    def __init__(self, settings: Settings, bridge_metrics_urls: Sequence[str] = ()) -> None:
        self.settings = settings
        self.bridge_metrics_urls = list(bridge_metrics_urls) or [
            f"http://{settings.host}:{settings.bridge_metrics_port}/metrics"
        ]
        points = max(
            2, round(settings.dashboard_history_minutes * 60 / settings.dashboard_refresh_s)
        )
        self.history = History(points)
        self.markers: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self._parts: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self._rates = Rates()
        self._captured = OffsetRate()
        self._consumed = OffsetRate()
        self._started = time.time()
        self._last_read: dict[str, float] = {}
        self._groups = GroupView(settings)
        s = settings
        self._predictions = TopicTail(s, s.predictions_topic, "end")
        self._dlq = TopicTail(s, s.dlq_topic, DLQ_RECENT)
        self._events = TopicTail(s, s.model_events_topic, "beginning")
        self._decoder = avro.writer_schema_deserializer(
            avro.registry_client(s.registry_url, s.registry_basic_auth)
        )
        self._latency = LatencySampler(
            lambda value: self._decoder(value, None), s.predictions_table
        )
        self._priced_total = 0
        self._dlq_total = 0
        self._dlq_recent: deque[dict[str, Any]] = deque(maxlen=DLQ_RECENT)
        self._aliases = registry.Aliases()
        self._monitor: Any = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dashboard-collector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for tail in (self._predictions, self._dlq, self._events):
            tail.close()
        if self._monitor is not None:
            self._monitor.close()
        if self._conn is not None:
            self._conn.close()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        refresh = self.settings.dashboard_refresh_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.collect()
            except Exception:  # a surprise in one round must not end the dashboard
                logger.exception("dashboard round failed unexpectedly; the next one goes on")
            self._stop.wait(max(0.0, refresh - (time.monotonic() - started)))

    # -- one round --------------------------------------------------------------------

    def collect(self) -> None:
        """Read every source that is due, then publish the state and a new point."""
        now = time.time()
        point: dict[str, Any] = {"t": round(now, 3)}
        self._read("kafka", lambda: self._kafka(now, point))
        if self._due("members", now):
            self._read("members", self._members)
        if self._due("connect", now):
            self._read("connect", self._connectors)
        self._read("bridges", lambda: self._bridges(now))
        self._read("service", lambda: self._service(now, point))
        if self._due("model_info", now):
            self._read("model_info", self._model_info)
        self._read("predictions", lambda: self._predicted(now, point))
        self._read("dlq", lambda: self._dead_letters(now, point))
        self._read("registry", self._registry)
        self._read("postgres", lambda: self._postgres(now, point))
        if self._due("reprice", now):
            self._read("reprice", self._reprice)
        self._read("evaluation", lambda: self._evaluation(now, point))
        self.state = self._compose(now)
        self.history.append(point)

    def _due(self, name: str, now: float) -> bool:
        if now - self._last_read.get(name, 0.0) < EVERY_S[name]:
            return False
        self._last_read[name] = now
        return True

    def _read(self, name: str, read: Callable[[], None]) -> None:
        """Run one source's read; remember its failure (logged when it changes)."""
        try:
            read()
        except (StreamingMLError, requests.RequestException, psycopg2.Error) as error:
            self._fail(name, str(error).strip())
        except Exception as error:  # KafkaException and friends: say what, keep going
            self._fail(name, f"{type(error).__name__}: {error}")
        else:
            if self._errors.pop(name, None) is not None:
                logger.info("dashboard source answers again", extra={"source": name})

    def _fail(self, name: str, message: str) -> None:
        if self._errors.get(name) != message:
            logger.warning("dashboard source failed", extra={"source": name, "error": message})
        self._errors[name] = message
        self._parts.pop(name, None)

    # -- sources ----------------------------------------------------------------------

    def _kafka(self, now: float, point: dict[str, Any]) -> None:
        s = self.settings
        ends = self._groups.end_offsets(s.listings_topic)
        bridge = self._groups.lag(s.consumer_group, s.listings_topic, ends)
        sink = self._groups.lag(f"connect-{s.sink_connector}", s.predictions_topic)
        point["captured"] = self._captured.update(now, ends)
        point["consumed"] = self._consumed.update(now, bridge[1] if bridge is not None else None)
        if bridge is not None:
            lag, _committed = bridge
            point.update({f"lag_p{p}": float(n) for p, n in lag.items()})
        if sink is not None:
            point["sink_lag"] = float(sum(sink[0].values()))
        self._parts["kafka"] = {
            "partitions": sorted(ends) if ends is not None else [],
            "lag": bridge[0] if bridge is not None else {},
            "sink_lag": sum(sink[0].values()) if sink is not None else None,
        }

    def _members(self) -> None:
        s = self.settings
        self._parts["members"] = {
            "bridge": [m.as_dict() for m in self._groups.members(s.consumer_group)],
            "evaluator": [m.as_dict() for m in self._groups.members(s.evaluator_group)],
        }

    def _connectors(self) -> None:
        answers = client.all_statuses(self.settings.connect_url, timeout_s=HTTP_TIMEOUT_S)
        self._parts["connect"] = {
            name: commands.summarise(answers.get(name), commands.topic_of(self.settings, name))
            for name in self.settings.connector_names
        }

    def _bridges(self, now: float) -> None:
        replicas = []
        for url in self.bridge_metrics_urls:
            try:
                samples = scrape.scrape(url, HTTP_TIMEOUT_S)
            except StreamingMLError as error:
                replicas.append({"url": url, "up": False, "error": str(error)})
                continue
            restarts = scrape.by_label(samples, "sml_connector_restarts_total", "connector")
            replicas.append(
                {
                    "url": url,
                    "up": True,
                    "paused": bool(scrape.total(samples, "sml_bridge_paused")),
                    "assigned": scrape.total(samples, "sml_bridge_assigned_partitions"),
                    "events_rate": self._rates.update(
                        now, f"bridge|{url}", scrape.total(samples, "sml_bridge_events_total")
                    ),
                    "dlq_by_stage": scrape.by_label(samples, "sml_bridge_dlq_total", "stage"),
                    "aborted": scrape.total(samples, "sml_bridge_transactions_aborted_total"),
                    "connector_restarts": restarts,
                }
            )
        self._parts["bridges"] = replicas
        if not any(r["up"] for r in replicas):
            raise StackError(
                f"no bridge metrics at {', '.join(self.bridge_metrics_urls)}: start a bridge "
                "(`streaming-ml bridge`) or name its metrics with --bridge-metrics URL"
            )

    def _service(self, now: float, point: dict[str, Any]) -> None:
        url = self.settings.prediction_url.rstrip("/")
        ready = _get(url, "/readyz").status_code == 200
        samples = scrape.parse(_get(url, "/metrics").text)
        rows = scrape.by_label(samples, "sml_service_arm_rows_total", "arm")
        rates = {arm: self._rates.update(now, f"service|{arm}", n) for arm, n in rows.items()}
        point["service_rows"] = sum(r for r in rates.values() if r is not None) if rates else None
        self._parts["service"] = {"url": url, "ready": ready, "rows_rate": rates}

    def _model_info(self) -> None:
        if "service" in self._errors:
            self._parts.pop("model_info", None)
            return  # said once, under "service"
        url = self.settings.prediction_url.rstrip("/")
        info = _get(url, "/model_info", method="POST").json()
        arms = {
            arm: {"tag": card.get("tag"), "split_percent": card.get("split_percent")}
            for arm, card in (info.get("arms") or {"champion": info}).items()
        }
        self._parts["model_info"] = {"arms": arms, "registry": info.get("registry")}

    def _predicted(self, now: float, point: dict[str, Any]) -> None:
        self._priced_total += self._latency.observe(self._predictions.poll(), now)
        point["priced"] = self._rates.update(
            now, "priced", float(self._priced_total) if self._predictions.assigned else None
        )

    def _dead_letters(self, now: float, point: dict[str, Any]) -> None:
        for msg in self._dlq.poll():
            # The tail starts a few records back to show the latest reasons; those
            # are not part of the rate.
            if msg.timestamp()[1] / 1000 >= self._started:
                self._dlq_total += 1
            headers = {k: (v or b"").decode(errors="replace") for k, v in msg.headers() or []}
            self._dlq_recent.appendleft(
                {
                    "at": msg.timestamp()[1] / 1000,
                    "reason": headers.get("reason", "(no reason header)"),
                    "listing_id": self._listing_id(msg.key()),
                    "source": f"{headers.get('source.partition', '?')}@"
                    f"{headers.get('source.offset', '?')}",
                }
            )
        point["dlq"] = self._rates.update(
            now, "dlq", float(self._dlq_total) if self._dlq.assigned else None
        )

    def _listing_id(self, key: bytes | None) -> int | None:
        if key is None:
            return None
        try:
            return int(self._decoder(key, None)["id"])
        except Exception:  # a key that is not a change key: the reason still shows
            return None

    def _registry(self) -> None:
        for msg in self._events.poll():
            self._aliases.apply_record(msg.value())
        aliases = self._aliases
        experiment = aliases.experiment
        self.markers = [
            {"at": e.at, "kind": e.kind, "tag": e.tag or e.challenger or e.shadow}
            for e in aliases.history
            if e.kind in MARKER_KINDS
        ]
        self._parts["registry"] = {
            "champion": aliases.champion,
            "previous": aliases.previous_champion,
            "experiment": None
            if experiment is None
            else {
                "challenger": experiment.challenger,
                "split_percent": experiment.split_percent,
                "shadow": experiment.shadow,
            },
            "events": [
                e.model_dump(include={"kind", "tag", "challenger", "shadow", "at", "note", "by"})
                for e in aliases.history[-REGISTRY_EVENTS:]
            ][::-1],
            "following": self._events.assigned,
            "unreadable_events": aliases.unreadable,
            # The page shows accuracy only for these (when there are any): the predictions
            # topic may hold prices of models this registry never knew.
            "tags": sorted(
                {t for e in aliases.history for t in (e.tag, e.challenger, e.shadow) if t}
            ),
        }

    def _postgres(self, now: float, point: dict[str, Any]) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT n_tup_ins + n_tup_upd + n_tup_del, n_live_tup "
                    "FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = %s",
                    (self.settings.predictions_table,),
                )
                found = cur.fetchone()
            self._latency.resolve(conn, now)
        except psycopg2.Error:
            self._conn = None  # reconnect next round
            conn.close()
            raise
        point["written"] = self._rates.update(now, "written", float(found[0]) if found else None)
        point.update(self._latency.point(now))
        self._parts["postgres"] = {
            "rows": int(found[1]) if found else None,
            "latency_stages": self._latency.stages(now),
            "latency_pending": len(self._latency.pending),
            "latency_given_up": self._latency.given_up,
            "latest_listing_id": self._latency.written[-1].listing_id
            if self._latency.written
            else None,
        }

    def _reprice(self) -> None:
        table = self.settings.reprice_jobs_table
        try:
            found = reprice.recent_jobs(self._connection(), table, REPRICE_JOBS)
        except psycopg2.errors.UndefinedTable as error:
            raise StreamingMLError(
                f"no table {table} (a database older than re-pricing): run `streaming-ml "
                "stack up` again, or apply postgres/02-schema.sql"
            ) from error
        self._parts["reprice"] = {"table": table, "jobs": [job.as_dict() for job in found]}

    def _connection(self) -> Any:
        if self._conn is None:
            try:
                dsn = postgres_dsn(self.settings, "reader")
            except (OSError, KeyError) as error:
                raise StreamingMLError(
                    f"no database password in {self.settings.state_dir} ({error}); point "
                    "SML_STATE_DIR at the stack's state directory"
                ) from error
            self._conn = psycopg2.connect(dsn, connect_timeout=3)
            self._conn.autocommit = True
        return self._conn

    def _evaluation(self, now: float, point: dict[str, Any]) -> None:
        if self._monitor is None:
            if not self._due("evaluation_retry", now):
                # Between two tries the panel keeps saying why there is nothing.
                raise StreamingMLError(self._errors.get("evaluation", "no evaluation yet"))
            self._monitor = Monitor(self.settings)
        budget = Deadline.after(MONITOR_BUDGET_S)
        while self._monitor.poll(timeout_s=0) and not budget.expired():
            pass
        snapshot = self._monitor.snapshot()
        for pair, entry in snapshot["pairs"].items():
            window = entry["last_n"]
            point[f"mae|{pair}"] = window["mae"]
            point[f"mape|{pair}"] = window["mape"]
        open_after = now - self.settings.metrics_window_minutes * 60
        alerts = snapshot["alerts"]
        self._parts["evaluation"] = {
            "caught_up": self._monitor.caught_up,
            "pairs": list(snapshot["pairs"].values()),
            "drift": snapshot["drift"],
            "alerts_raised": alerts["count"],
            "alerts": [
                {**a, "open": a["raised_ts_ms"] / 1000 >= open_after}
                for a in reversed(alerts["recent"])
            ],
        }

    # -- what the page gets -----------------------------------------------------------

    def _compose(self, now: float) -> dict[str, Any]:
        s = self.settings
        return {
            "now": now,
            "refresh_s": s.dashboard_refresh_s,
            "history_points": self.history.max_points,
            "names": {
                "listings_table": s.listings_table,
                "predictions_table": s.predictions_table,
                "listings_topic": s.listings_topic,
                "predictions_topic": s.predictions_topic,
                "dlq_topic": s.dlq_topic,
                "consumer_group": s.consumer_group,
                "source_connector": s.source_connector,
                "sink_connector": s.sink_connector,
                "service_url": s.prediction_url,
            },
            "thresholds": {
                "drift_psi": s.drift_psi_threshold,
                "window_outcomes": s.metrics_window_outcomes,
                "open_alert_minutes": s.metrics_window_minutes,
            },
            "errors": dict(self._errors),
            "dlq": {"total_seen": self._dlq_total, "recent": list(self._dlq_recent)},
            **{name: self._parts.get(name) for name in PARTS},
        }

    @property
    def seq(self) -> int:
        """Number of the latest round (of its point in ``history``)."""
        return self.history.count

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs when it connects: the state and the history."""
        return {"state": self.state, "history": self.history.points(), "markers": self.markers}

    def tick(self, seen: int) -> tuple[int, dict[str, Any]]:
        """What a page that has the points up to number ``seen`` needs now (every point
        since, so a page never misses one), and the number of the last point sent."""
        last, points = self.history.since(seen)
        return last, {"state": self.state, "points": points, "markers": self.markers}


def _get(base_url: str, path: str, method: str = "GET") -> requests.Response:
    """The service's answer on ``path``; StackError with the fix when it does not answer."""
    try:
        # BentoML's APIs are POST with a JSON body, even the ones that only read.
        body: dict[str, Any] | None = {} if method == "POST" else None
        response = requests.request(method, base_url + path, json=body, timeout=HTTP_TIMEOUT_S)
        if path != "/readyz":
            response.raise_for_status()
    except requests.RequestException as error:
        raise StackError(
            f"the prediction service at {base_url} does not answer {path} "
            f"({type(error).__name__}); start it with `streaming-ml serve` or point "
            "SML_SERVICE_URL at it"
        ) from error
    return response


PARTS = (
    "kafka",
    "members",
    "connect",
    "bridges",
    "service",
    "model_info",
    "registry",
    "postgres",
    "evaluation",
    "reprice",
)
