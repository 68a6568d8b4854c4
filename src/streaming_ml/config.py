"""All settings in one pydantic-settings object, read from ``SML_*`` environment variables.

Only entry points (the CLI, ``service.py``, test fixtures) build a ``Settings``;
library code receives the values it needs as arguments.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streaming_ml.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

# `streaming-ml train` without --data, and the demo's first model.
DEFAULT_SYNTHETIC_ROWS = 20_000
DEFAULT_SEED = 42
SQL_NAME = r"^[a-z_][a-z0-9_]{0,62}$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SML_", extra="ignore")

    # Where things live.
    host: str = Field(
        "127.0.0.1",
        description="Address of the local stack: where `stack up` listens and clients dial",
    )
    bind_host: str | None = Field(
        None,
        description="Interface our own listeners bind to: service, metrics, dashboard "
        "(default: SML_HOST)",
    )
    state_dir: Path = Field(
        REPO_ROOT / ".stack", description="Stack state: data dirs, logs, secrets"
    )
    dist_dir: Path = Field(
        REPO_ROOT / ".stack" / "dist",
        description="Downloaded jars (Kafka, Connect, Debezium, Apicurio), shared by state dirs",
    )

    # Ports of the local stack (conventional defaults).
    postgres_port: int = 5432
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_nodes: int = Field(
        1,
        ge=1,
        le=9,
        description="KRaft nodes `stack up` runs, each broker and controller (node k listens "
        "on SML_KAFKA_PORT and SML_KAFKA_CONTROLLER_PORT plus 2(k-1)); with 3 or more, topics "
        "get 3 replicas and min.insync.replicas 2",
    )
    registry_port: int = 8081
    connect_port: int = 8083
    connect_full_jit: bool = Field(
        True,
        description="Run Connect's JVM with C2 as well as C1 (false: C1 only, as the broker "
        "and registry run): a third less Connect CPU at 4,000-6,000 rows/s",
    )
    connect_metrics_port: int = Field(
        9404,
        description="Connect's JMX metrics as Prometheus text: Debezium's streaming "
        "metrics, the source task's and its producer's",
    )
    adminer_port: int = 8080
    service_port: int = 3000
    bridge_metrics_port: int = 9400
    watchdog_metrics_port: int = Field(
        9409, description="/metrics of `connectors watch`: restarts and the replication slot"
    )

    # Someone else's infrastructure (README, "Your own infrastructure"): each one, when
    # set, replaces the local stack's address for every client. Secrets come from the
    # environment or a file, never from the command line.
    kafka_bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers every client dials (default: SML_HOST:port)"
    )
    kafka_client_properties_file: Path | None = Field(
        None,
        description="Java-style properties file of librdkafka settings given to every Kafka "
        "client (security.protocol, sasl.*, ssl.*)",
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="sasl.password of every Kafka client (or _FILE)"
    )
    kafka_sasl_password_file: Path | None = Field(
        None, description="File holding sasl.password of every Kafka client"
    )
    kafka_broker_properties_file: Path | None = Field(
        None,
        description="Properties added to the local broker's server.properties (e.g. a SASL "
        "listener); they override ours",
    )
    postgres_host: str | None = Field(
        None, description="Postgres host that clients and connectors dial (default: SML_HOST)"
    )
    postgres_user: str | None = Field(
        None, description="Role of the application's connections (default: the stack's cars_app)"
    )
    postgres_password: SecretStr | None = Field(
        None, description="Password of SML_POSTGRES_USER (default: the stack's secrets)"
    )
    postgres_password_file: Path | None = Field(
        None, description="File holding the password of SML_POSTGRES_USER"
    )
    postgres_dsn: SecretStr | None = Field(
        None, description="libpq DSN of the application's connections (replaces the above)"
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible schema registry URL (default: the local Apicurio)"
    )
    schema_registry_user: str | None = Field(None, description="Registry basic-auth user")
    schema_registry_password: SecretStr | None = Field(
        None, description="Registry basic-auth password (or _FILE)"
    )
    schema_registry_password_file: Path | None = Field(
        None, description="File holding the registry basic-auth password"
    )
    kafka_connect_url: str | None = Field(
        None, description="Kafka Connect REST URL (default: the local worker)"
    )

    # Names used everywhere: code, connector configs, README, compose.
    # Names that end up in SQL, generated DDL and connector configs: plain lower-case
    # identifiers only, so none of them can carry SQL (queries also quote them).
    database: str = Field("cars", pattern=SQL_NAME)
    listings_table: str = Field("car_listings", pattern=SQL_NAME)
    predictions_table: str = Field("car_price_predictions", pattern=SQL_NAME)
    topic_prefix: str = "cars"
    predictions_topic: str = "car_price_predictions"
    dlq_topic: str = "car_listings.dlq"
    shadow_topic: str = Field(
        "car_price_predictions_shadow", description="Shadow models' predictions (never served)"
    )
    shadow_table: str = Field(
        "car_price_predictions_shadow", pattern=SQL_NAME, description="Table the shadow sink writes"
    )
    outcomes_topic: str = Field(
        "car_price_outcomes", description="Predictions paired with their labels (Avro)"
    )
    outcomes_table: str = Field(
        "car_price_outcomes", pattern=SQL_NAME, description="Table the outcomes sink writes"
    )
    alerts_topic: str = Field("car_price_alerts", description="Drift and degradation alerts")
    alerts_table: str = Field(
        "car_price_alerts", pattern=SQL_NAME, description="Table the alerts sink writes"
    )
    reprice_jobs_table: str = Field(
        "car_price_reprice_jobs",
        pattern=SQL_NAME,
        description="Re-pricing jobs of `streaming-ml reprice`: cursor, progress, state",
    )
    source_connector: str = "car-listings-source"
    sink_connector: str = "car-price-predictions-sink"
    shadow_sink_connector: str = Field(
        "car-price-shadow-sink", description="JDBC sink of the shadow topic (the sink's config)"
    )
    outcomes_sink_connector: str = "car-price-outcomes-sink"
    alerts_sink_connector: str = "car-price-alerts-sink"
    consumer_group: str = "streaming-ml-bridge"

    # Model and service.
    model_name: str = Field("ford_price", description="BentoML model name; tag is name:version")
    model_version: str = Field("latest", description="Model version the service loads")
    service_url: str | None = Field(None, description="Prediction service base URL")
    request_timeout_s: float = 5.0
    service_max_body_bytes: int = Field(
        8_388_608, ge=1024, description="Largest request body the service reads (413 above)"
    )
    service_max_rows: int = Field(
        10_000, ge=1, description="Most rows in one /predict or /predict_batch (413 above)"
    )
    service_max_explained_rows: int = Field(
        1_000, ge=1, description="Most rows in one request with explanations (413 above)"
    )
    service_max_concurrency: int = Field(
        64, ge=1, description="Most requests the service works on at once (429 above)"
    )
    models_topic: str = Field(
        "sml_models", description="Compacted topic of published models (key: tag)"
    )
    model_events_topic: str = Field(
        "sml_model_events", description="Model registry log: promotions, rollbacks, experiments"
    )
    model_keep_versions: int = Field(
        5,
        ge=1,
        description="Published versions kept per model name; older ones no alias names are "
        "tombstoned on the models topic",
    )
    model_follow: bool = Field(
        True,
        description="Service follows the registry's champion and experiment (false: serve "
        "SML_MODEL_NAME:SML_MODEL_VERSION only)",
    )
    model_poll_s: float = Field(
        0.5, gt=0, description="How often the service looks for registry changes"
    )
    model_signing_key: SecretStr | None = Field(
        None,
        description="Key that signs and checks models on the models topic (default: the "
        "state dir's secrets/model-signing.key, made by `stack up`)",
    )
    model_signing_key_file: Path | None = Field(
        None, description="File holding the model signing key (instead of the state dir's)"
    )

    # Bridge micro-batching.
    batch_max_events: int = Field(500, description="Max events per model call")
    batch_linger_ms: int = Field(5, description="Max wait to fill a batch")
    # Off by default: TreeSHAP costs ~6 ms a row per model against ~0.02 ms to price, which
    # would make the model call most of the bridge's time (docs/performance.md).
    bridge_explain: bool = Field(
        False,
        description="Bridge asks for explanations: each prediction row carries its base price "
        "and three largest contributions",
    )
    bridge_explain_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Timeout of the bridge's model call when it asks for explanations "
        "(replaces SML_REQUEST_TIMEOUT_S there)",
    )

    # Re-pricing (`streaming-ml reprice`, docs/bridge.md).
    reprice_rate: float = Field(
        1000.0, gt=0, description="Listings touched per second by `streaming-ml reprice`"
    )
    reprice_chunk_rows: int = Field(
        500, ge=1, le=10_000, description="Most listings touched in one re-pricing transaction"
    )
    reprice_swap_timeout_s: float = Field(
        60.0, gt=0, description="How long a re-pricing waits for the service to serve its model"
    )
    slot_wal_keep_size: str = Field(
        "2GB",
        pattern=r"^[1-9][0-9]*(MB|GB|TB)$",
        description="Local Postgres' max_slot_wal_keep_size: WAL a stalled CDC slot may hold "
        "before Postgres invalidates it (never unbounded: a forgotten slot must not fill the disk)",
    )
    connector_check_interval_s: float = Field(
        15.0,
        ge=0,
        description="Seconds between checks for FAILED connectors/tasks (0: off)",
    )

    # Scale-out and faults.
    partitions: int = Field(
        3, ge=1, description="Partitions of the change, predictions and DLQ topics (new topics)"
    )
    bridge_instance_id: str | None = Field(
        None, description="Static group membership id of this bridge replica (optional)"
    )
    service_retries: int = Field(
        2, ge=0, description="Quick retries of a failed model call before pausing"
    )
    service_backoff_s: float = Field(
        0.25, gt=0, description="First retry/probe delay; doubles up to 4 s"
    )
    service_max_strikes: int = Field(
        3, ge=1, description="Passes a record may fail alone before it is dead-lettered"
    )
    transaction_timeout_s: float = Field(
        10.0, ge=1, description="Kafka transaction timeout of the bridge's output"
    )

    # Online evaluation (accuracy on labels, drift); see docs/monitoring.md.
    evaluator_group: str = Field(
        "streaming-ml-evaluator", description="Consumer group of the evaluator processes"
    )
    evaluator_state_topic: str = Field(
        "sml_evaluator_state", description="Compacted changelog of the evaluator's state"
    )
    evaluator_metrics_port: int = Field(9401, description="Evaluator's Prometheus port")
    metrics_window_outcomes: int = Field(
        500, ge=1, description="Sliding window of the running metrics: last N outcomes"
    )
    metrics_window_minutes: float = Field(
        10.0, gt=0, description="Sliding window of the running metrics: last T minutes"
    )
    drift_window_rows: int = Field(
        500, ge=50, description="Rows per drift window (per change-topic partition)"
    )
    drift_psi_threshold: float = Field(
        0.2, gt=0, description="PSI above which a window counts as drifted"
    )
    drift_alert_windows: int = Field(
        3, ge=1, description="Drifted windows in a row before an alert is raised"
    )
    degraded_threshold: float = Field(
        10.0, gt=0, description="Page-Hinkley threshold on the log error (model degraded)"
    )

    # The online challenger (docs/model.md, "The online challenger").
    online_model_name: str = Field(
        "ford_online", description="Name of the online (River) model in the store and registry"
    )
    online_snapshot_labels: int = Field(
        500, ge=1, description="Labels the learner learns between two snapshots"
    )
    learner_group: str = Field(
        "streaming-ml-learner", description="Group id the learner reports its reads under"
    )

    # The dashboard (`streaming-ml dashboard`); see README "The dashboard".
    dashboard_port: int = Field(8090, description="Port of the dashboard page")
    dashboard_refresh_s: float = Field(
        1.0, gt=0, le=1.0, description="Seconds between the dashboard's reads (live: at most 1)"
    )
    dashboard_history_minutes: float = Field(
        15.0, gt=0, le=240, description="Minutes of time series the dashboard keeps in memory"
    )
    dashboard_allowed_hosts: list[str] = Field(
        [],
        description="Host names the dashboard answers besides SML_HOST, localhost and "
        "127.0.0.1 (any other Host header gets a 400)",
    )
    dashboard_max_streams: int = Field(
        8, ge=1, description="Most pages the dashboard streams to at once (503 above)"
    )

    fault_kill_at: str | None = Field(
        None, description="Tests only: SIGKILL the bridge at POINT:N (see bridge/faults.py)"
    )

    log_level: str = "INFO"
    log_json: bool = False

    @property
    def listings_topic(self) -> str:
        return f"{self.topic_prefix}.public.{self.listings_table}"

    @property
    def connector_names(self) -> tuple[str, ...]:
        """Every connector of the pipeline: the source and the sinks."""
        return (
            self.source_connector,
            self.sink_connector,
            self.shadow_sink_connector,
            self.outcomes_sink_connector,
            self.alerts_sink_connector,
        )

    @model_validator(mode="after")
    def _kafka_ports_distinct(self) -> Settings:
        ports = [port for pair in self.kafka_node_ports for port in pair]
        if len(set(ports)) != len(ports):
            raise ValueError(
                f"the {self.kafka_nodes} Kafka nodes' ports overlap ({ports}): choose "
                "SML_KAFKA_PORT and SML_KAFKA_CONTROLLER_PORT an odd distance apart"
            )
        return self

    @property
    def kafka_node_ports(self) -> list[tuple[int, int]]:
        """(client port, controller port) of each KRaft node, node 1 first: pairs two
        apart, so the defaults give 9092/9093, 9094/9095, 9096/9097."""
        return [
            (self.kafka_port + 2 * k, self.kafka_controller_port + 2 * k)
            for k in range(self.kafka_nodes)
        ]

    @property
    def listen_host(self) -> str:
        """Where our own listeners (service, metrics, dashboard) bind."""
        return self.bind_host or self.host

    @property
    def kafka_bootstrap(self) -> str:
        """What every client dials: the user's cluster when SML_KAFKA_BOOTSTRAP_SERVERS names
        one, else the local stack's nodes."""
        return self.kafka_bootstrap_servers or self.local_kafka_bootstrap

    @property
    def local_kafka_bootstrap(self) -> str:
        """The local stack's nodes, every one, so a client can start from any that is up."""
        return ",".join(f"{self.host}:{port}" for port, _ in self.kafka_node_ports)

    @property
    def kafka_replication_factor(self) -> int:
        """Replicas of every topic we create (ours, Connect's, the brokers' own)."""
        return min(self.kafka_nodes, 3)

    @property
    def kafka_min_insync_replicas(self) -> int:
        """With three replicas a write needs two: one node may be down and nothing
        acknowledged lives on one disk only."""
        return 2 if self.kafka_replication_factor >= 3 else 1

    def kafka_topic_configs(self) -> dict[str, str]:
        """Configs every topic we create carries beyond its own (none with one node)."""
        if self.kafka_replication_factor == 1:
            return {}
        return {"min.insync.replicas": str(self.kafka_min_insync_replicas)}

    @property
    def sasl_password(self) -> str | None:
        return secret_value(self.kafka_sasl_password, self.kafka_sasl_password_file)

    @property
    def database_host(self) -> str:
        return self.postgres_host or self.host

    @property
    def database_password(self) -> str | None:
        return secret_value(self.postgres_password, self.postgres_password_file)

    @property
    def registry_url(self) -> str:
        """Confluent-compatible API of the Apicurio registry."""
        if self.schema_registry_url:
            return self.schema_registry_url
        return f"http://{self.host}:{self.registry_port}/apis/ccompat/v7"

    @property
    def registry_basic_auth(self) -> str | None:
        """``user:password`` for the registry's basic auth, when a user is set."""
        if not self.schema_registry_user:
            return None
        password = secret_value(self.schema_registry_password, self.schema_registry_password_file)
        return f"{self.schema_registry_user}:{password or ''}"

    @property
    def registry_core_url(self) -> str:
        """Apicurio's native v3 API (the Connect converter and version probes use it)."""
        if self.schema_registry_url:
            # Apicurio serves both APIs side by side under /apis.
            return self.schema_registry_url.replace("/apis/ccompat/v7", "/apis/registry/v3")
        return f"http://{self.host}:{self.registry_port}/apis/registry/v3"

    @property
    def connect_url(self) -> str:
        return self.kafka_connect_url or f"http://{self.host}:{self.connect_port}"

    @property
    def connect_metrics_url(self) -> str:
        return f"http://{self.host}:{self.connect_metrics_port}/metrics"

    @property
    def model_tag(self) -> str:
        return f"{self.model_name}:{self.model_version}"

    @property
    def prediction_url(self) -> str:
        return self.service_url or f"http://{self.host}:{self.service_port}"

    @property
    def dashboard_hosts(self) -> list[str]:
        """Every ``Host`` the dashboard answers."""
        return list(
            dict.fromkeys([self.host, "localhost", "127.0.0.1", *self.dashboard_allowed_hosts])
        )

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}/"


def secret_value(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given directly (environment) or as a file (trailing newline dropped)."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().rstrip("\r\n")
        except OSError as error:
            raise ConfigError(f"cannot read the secret file {file}: {error}") from error
    return None


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as ``SML_*`` variables, so child processes see the same settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif hasattr(value, "get_secret_value"):
            text = value.get_secret_value()
        else:
            text = str(value)
        env[f"SML_{name.upper()}"] = text
    return env
