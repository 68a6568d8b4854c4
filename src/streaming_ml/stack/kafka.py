"""Apache Kafka 4.3 in KRaft mode: one process per node, each both broker and controller.

One node by default (``kafka``); with ``SML_KAFKA_NODES=3`` three (``kafka-1`` ..
``kafka-3``), each with its own ports, log dir and logs, in one quorum, and every topic
replicated three times. Storage is formatted once (``kafka.tools.StorageTool format``,
the same cluster id on every node); the controller quorum is static
(``controller.quorum.voters``) so ports can change between runs of the same state dir.
Listeners bind to the loopback and advertise exactly that address.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from streaming_ml.config import Settings
from streaming_ml.errors import StackError
from streaming_ml.kafka import clients
from streaming_ml.kafka.properties import read_properties
from streaming_ml.stack import detached
from streaming_ml.stack.jars import java_binary, kafka_classpath

NAME = "kafka"
HEAP = "-Xmx512m"


@dataclass(frozen=True)
class Node:
    """One KRaft node: its id, component name (pid file, logs) and ports."""

    node_id: int
    name: str
    port: int
    controller_port: int

    @property
    def logs(self) -> tuple[str, str]:
        """The process's stdout and the broker's own log, under <state>/logs."""
        return f"{self.name}.log", f"{self.name}-server.log"


def nodes(settings: Settings) -> list[Node]:
    """The nodes ``settings`` asks for; a single node keeps the plain name ``kafka``."""
    ports = settings.kafka_node_ports
    if len(ports) == 1:
        return [Node(1, NAME, *ports[0])]
    return [Node(k, f"{NAME}-{k}", *pair) for k, pair in enumerate(ports, start=1)]


def home(state_dir: Path, node: Node | None = None) -> Path:
    return state_dir / (node.name if node else NAME)


def data_dir(state_dir: Path, node: Node | None = None) -> Path:
    return home(state_dir, node) / "data"


def _node(settings: Settings, node: Node | None) -> Node:
    return node or nodes(settings)[0]


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


def server_properties(settings: Settings, node: Node | None = None) -> str:
    """``node``'s server.properties (the first node by default)."""
    host = settings.host
    node = _node(settings, node)
    voters = ",".join(f"{n.node_id}@{host}:{n.controller_port}" for n in nodes(settings))
    replicas = str(settings.kafka_replication_factor)
    min_isr = str(settings.kafka_min_insync_replicas)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir(settings.state_dir, node)),
        "num.partitions": "1",
        # Every topic is created on purpose, with its partition count and replicas: a
        # client subscribing or producing first must not create a one-partition topic.
        "auto.create.topics.enable": "false",
        # Internal topics as replicated as ours: one replica on one node, three on three
        # (a write then needs two in sync).
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
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


def _write_config(settings: Settings, node: Node) -> tuple[Path, Path]:
    base = home(settings.state_dir, node)
    base.mkdir(parents=True, exist_ok=True)
    props = base / "server.properties"
    props.write_text(server_properties(settings, node))
    log4j = base / "log4j2.xml"
    log4j.write_text(log4j_config(settings.state_dir / "logs" / node.logs[1]))
    return props, log4j


def new_cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64 of a UUID). Like Kafka's own
    ``Uuid.randomUuid``, never one starting with '-': the storage tool's argument parser
    would take it for an option (one format in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def cluster_id(settings: Settings) -> str | None:
    """The id a node of this state dir was formatted with, if any was."""
    for node in nodes(settings):
        meta = data_dir(settings.state_dir, node) / "meta.properties"
        if meta.exists():
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
    return None


def check_layout(settings: Settings) -> None:
    """Refuse a state dir formatted for another number of nodes: its topics, offsets and
    connector state live in the other layout's log dirs, which these nodes would not read."""
    wanted = {home(settings.state_dir, node) for node in nodes(settings)}
    found = {
        path.parent.parent
        for path in settings.state_dir.glob(f"{NAME}*/data/meta.properties")
        if path.parent.parent.name == NAME or path.parent.parent.name.startswith(f"{NAME}-")
    }
    if found - wanted:
        raise StackError(
            f"kafka: {settings.state_dir} holds a cluster of other nodes "
            f"({', '.join(sorted(p.name for p in found))}) than SML_KAFKA_NODES="
            f"{settings.kafka_nodes} asks for. Set SML_KAFKA_NODES back, or start afresh with "
            "`streaming-ml stack down --purge` or another SML_STATE_DIR."
        )


def format_storage(
    settings: Settings,
    dist_dir: Path,
    run_as: detached.RunAs | None = None,
    node: Node | None = None,
) -> bool:
    """Format ``node``'s log dir on first start (as ``run_as``, who will own it), with the
    cluster id of the nodes already formatted. Returns True when it was formatted now."""
    node = _node(settings, node)
    props, log4j = _write_config(settings, node)
    if (data_dir(settings.state_dir, node) / "meta.properties").exists():
        return False
    if run_as:
        detached.own_tree(data_dir(settings.state_dir, node), run_as)
    argv = [
        str(java_binary()), *jvm_options("-Xmx256m", log4j, settings.state_dir / "logs"),
        "-cp", kafka_classpath(dist_dir), "kafka.tools.StorageTool",
        "format", f"--cluster-id={cluster_id(settings) or new_cluster_id()}", "-c", str(props),
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


def start(
    settings: Settings,
    dist_dir: Path,
    run_as: detached.RunAs | None = None,
    node: Node | None = None,
) -> int:
    node = _node(settings, node)
    props, log4j = _write_config(settings, node)
    if run_as:
        # The broker writes only under its log dir (and the logs dir, owned by `up`).
        detached.own_tree(data_dir(settings.state_dir, node), run_as)
    argv = [
        str(java_binary()), *jvm_options(HEAP, log4j, settings.state_dir / "logs"),
        "-cp", kafka_classpath(dist_dir), "kafka.Kafka", str(props),
    ]  # fmt: skip
    return detached.start(node.name, argv, state_dir=settings.state_dir, run_as=run_as)


def ready(settings: Settings, node: Node | None = None) -> bool:
    """The node answers a metadata request and lists itself (a broker that has not
    caught up with the quorum is not listed yet)."""
    node = _node(settings, node)
    # log_level 0: "connection refused" while the broker boots is expected, not news.
    admin = clients.admin(
        settings,
        {
            "bootstrap.servers": f"{settings.host}:{node.port}",
            "socket.timeout.ms": 2000,
            "log_level": 0,
        },
    )
    metadata = admin.list_topics(timeout=2)
    return node.node_id in metadata.brokers


def out_of_sync(settings: Settings, timeout_s: float = 10.0) -> dict[str, list[int]]:
    """Partitions whose in-sync replicas are fewer than their replicas, by topic ({}: all
    in sync), as the cluster's metadata says."""
    admin = clients.admin(
        settings, {"bootstrap.servers": settings.local_kafka_bootstrap, "log_level": 0}
    )
    lagging: dict[str, list[int]] = {}
    for name, topic in admin.list_topics(timeout=timeout_s).topics.items():
        for number, partition in topic.partitions.items():
            if set(partition.isrs) != set(partition.replicas):
                lagging.setdefault(name, []).append(number)
    return lagging
