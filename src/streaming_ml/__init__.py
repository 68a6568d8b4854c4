"""CDC-driven model serving: Postgres -> Debezium -> Kafka -> BentoML -> Kafka -> Postgres."""

__version__ = "0.1.0"
