"""Apache Kafka 4.3 in KRaft mode: one process that is both broker and controller.

Storage is formatted once (``kafka.tools.StorageTool format``); the controller quorum
is static (``controller.quorum.voters``) so ports can change between runs of the
same state dir. Listeners bind to the loopback and advertise exactly that address.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from streaming_ml.config import Settings
from streaming_ml.errors import StackError
from streaming_ml.kafka import clients
from streaming_ml.kafka.properties import read_properties
from streaming_ml.stack import detached
from streaming_ml.stack.jars import java_binary, kafka_classpath

NAME = "kafka"
HEAP = "-Xmx512m"


def home(state_dir: Path) -> Path:
    return state_dir / "kafka"


def data_dir(state_dir: Path) -> Path:
    return home(state_dir) / "data"


def jvm_options(heap: str, log4j: Path, logs_dir: Path, full_jit: bool = False) -> list[str]:
    """Shared by the broker and the Connect worker: small heap, serial GC and the C1
    compiler only. On 2 cores three JVMs starting at once spend most of their time
    compiling; C1-only brings a full `up` from ~35 s to ~10 s, and these processes are
    not the CPU bottleneck of the pipeline. Connect is, at high rates (Debezium's capture
    and the JDBC sink): it runs with ``full_jit`` (C2 too, ``SML_CONNECT_FULL_JIT``), which
    cut its CPU by a third at 4,000-6,000 rows/s (docs/performance.md)."""
    jit = [] if full_jit else ["-XX:TieredStopAtLevel=1"]
    return [
        heap, "-Xms64m", "-XX:+UseSerialGC", *jit, "-Xss512k",
        "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
        f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={logs_dir}",
    ]  # fmt: skip


def log4j_config(log_file: Path) -> str:
    """log4j2 XML: one rolling file per component (stdout goes to the process log)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="file" fileName="{log_file}" filePattern="{log_file}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients.consumer.internals" level="WARN"/>
    <Logger name="org.reflections" level="ERROR"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def server_properties(settings: Settings) -> str:
    host = settings.host
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{settings.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},"
        f"CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir(settings.state_dir)),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        # Single broker: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a crash (a full log dir halts the broker; kill -9) the restarted node
        # may register only once the controller (in this same process) has expired the
        # old incarnation's session. Until then its partitions have no leader, and the
        # transaction coordinator, which aborts the dead bridge's timed-out transaction
        # on its first sweep, skips the markers of leaderless partitions: the transaction
        # hangs open for good and read_committed readers (the bridge's group offsets,
        # the JDBC sink) stop there. So the session is short (the node re-registers in
        # ~4 s) and the first sweep comes well after it (a killed bridge's transaction
        # then blocks readers up to its timeout plus 12 s, unless the bridge restarts:
        # init_transactions aborts it at once).
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "12000",
        "log.retention.hours": "168",
        "num.io.threads": "4",
        "num.network.threads": "2",
    }
    if settings.kafka_broker_properties_file is not None:
        # The operator's additions win: e.g. a SASL listener beside the plain one.
        props.update(read_properties(settings.kafka_broker_properties_file))
    return "".join(f"{key}={value}\n" for key, value in props.items())


def _write_config(settings: Settings) -> tuple[Path, Path]:
    base = home(settings.state_dir)
    base.mkdir(parents=True, exist_ok=True)
    props = base / "server.properties"
    props.write_text(server_properties(settings))
    log4j = base / "log4j2.xml"
    log4j.write_text(log4j_config(settings.state_dir / "logs" / "kafka-server.log"))
    return props, log4j


def new_cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64 of a UUID). Like Kafka's own
    ``Uuid.randomUuid``, never one starting with '-': the storage tool's argument parser
    would take it for an option (one format in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def format_storage(
    settings: Settings, dist_dir: Path, run_as: detached.RunAs | None = None
) -> bool:
    """Format the log dir on first start (as ``run_as``, who will own it). Returns True
    when it was formatted now."""
    props, log4j = _write_config(settings)
    if (data_dir(settings.state_dir) / "meta.properties").exists():
        return False
    if run_as:
        detached.own_tree(data_dir(settings.state_dir), run_as)
    argv = [
        str(java_binary()), *jvm_options("-Xmx256m", log4j, settings.state_dir / "logs"),
        "-cp", kafka_classpath(dist_dir), "kafka.tools.StorageTool",
        "format", f"--cluster-id={new_cluster_id()}", "-c", str(props),
    ]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120,
        user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            "kafka: formatting storage failed; fix the cause below and rerun "
            "`streaming-ml stack up` (see also `streaming-ml stack logs kafka`):\n"
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return True


def start(settings: Settings, dist_dir: Path, run_as: detached.RunAs | None = None) -> int:
    props, log4j = _write_config(settings)
    if run_as:
        # The broker writes only under its log dir (and the logs dir, owned by `up`).
        detached.own_tree(data_dir(settings.state_dir), run_as)
    argv = [
        str(java_binary()), *jvm_options(HEAP, log4j, settings.state_dir / "logs"),
        "-cp", kafka_classpath(dist_dir), "kafka.Kafka", str(props),
    ]  # fmt: skip
    return detached.start(NAME, argv, state_dir=settings.state_dir, run_as=run_as)


def ready(settings: Settings) -> bool:
    """The broker answers a metadata request and lists itself."""
    # log_level 0: "connection refused" while the broker boots is expected, not news.
    admin = clients.admin(settings, {"socket.timeout.ms": 2000, "log_level": 0})
    metadata = admin.list_topics(timeout=2)
    return bool(metadata.brokers)
