"""Postgres DDL of the listings table, of the tables the JDBC sink fills and of the
re-pricing jobs."""

from __future__ import annotations

from collections.abc import Sequence

from streaming_ml.schema.fields import (
    ADDED_PREDICTION_FIELDS,
    ALERT_FIELDS,
    ALERT_KEY_FIELDS,
    OUTCOME_FIELDS,
    OUTCOME_KEY_FIELDS,
    PREDICTION_FIELDS,
    PredictionField,
)
from streaming_ml.schema.listing import LISTING_COLUMNS


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def listings_ddl(table: str = "car_listings") -> str:
    """The source table. No CHECK constraints on purpose: bad rows must reach the
    pipeline so they are dead-lettered with a reason instead of vanishing.

    REPLICA IDENTITY FULL puts the old row in the WAL, so Debezium can say which
    columns an update changed: that is how the bridge skips price-only updates.
    """
    cols = ",\n    ".join(f"{quote_ident(c.name)} {c.sql_type}" for c in LISTING_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS public.{table} (\n    id serial PRIMARY KEY,\n    {cols}\n);\n"
        f"ALTER TABLE public.{table} REPLICA IDENTITY FULL;\n"
    )


def table_ddl(
    table: str,
    fields: Sequence[PredictionField],
    key_fields: Sequence[str],
    added: Sequence[str] = (),
) -> str:
    """A sink table with ``written_at``, stamped by Postgres on every upsert so the
    benchmark can measure commit-to-visible latency without trusting any client clock.
    ``added`` columns are those older tables lack (ALTER TABLE ... IF NOT EXISTS)."""
    inline_key = len(key_fields) == 1
    cols = [
        f"{f.name} {f.sql_type}{' PRIMARY KEY' if inline_key and f.name in key_fields else ''}"
        for f in fields
    ]
    cols.append("written_at timestamptz NOT NULL DEFAULT clock_timestamp()")
    if not inline_key:
        cols.append(f"PRIMARY KEY ({', '.join(key_fields)})")
    body = ",\n    ".join(cols)
    alters = "".join(
        f"ALTER TABLE public.{table} ADD COLUMN IF NOT EXISTS {f.name} {f.sql_type};\n"
        for f in fields
        if f.name in added
    )
    return (
        f"CREATE TABLE IF NOT EXISTS public.{table} (\n    {body}\n);\n"
        f"{alters}"
        f"CREATE OR REPLACE FUNCTION public.{table}_stamp() RETURNS trigger AS $$\n"
        f"BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;\n"
        f"DROP TRIGGER IF EXISTS {table}_stamp ON public.{table};\n"
        f"CREATE TRIGGER {table}_stamp BEFORE INSERT OR UPDATE ON public.{table}\n"
        f"    FOR EACH ROW EXECUTE FUNCTION public.{table}_stamp();\n"
    )


def predictions_ddl(table: str = "car_price_predictions") -> str:
    return table_ddl(table, PREDICTION_FIELDS, ("listing_id",), ADDED_PREDICTION_FIELDS)


def outcomes_ddl(table: str = "car_price_outcomes") -> str:
    return table_ddl(table, OUTCOME_FIELDS, OUTCOME_KEY_FIELDS)


def alerts_ddl(table: str = "car_price_alerts") -> str:
    return table_ddl(table, ALERT_FIELDS, ALERT_KEY_FIELDS)


def reprice_jobs_ddl(table: str = "car_price_reprice_jobs") -> str:
    """The re-pricing jobs (`streaming-ml reprice`): one row a job, its cursor advanced in
    the same transaction as each chunk's touch, so a killed job resumes where it stopped
    and never touches a listing twice. ``max_id``: the last listing id when the job began
    (later listings are priced by the stream, already with the job's model)."""
    return (
        f"CREATE TABLE IF NOT EXISTS public.{table} (\n"
        "    job_id bigserial PRIMARY KEY,\n"
        "    model_tag text NOT NULL,\n"
        "    where_sql text NOT NULL DEFAULT '',\n"
        "    rate double precision,\n"
        "    last_id bigint NOT NULL DEFAULT 0,\n"
        "    max_id bigint NOT NULL,\n"
        "    total bigint NOT NULL,\n"
        "    done bigint NOT NULL DEFAULT 0,\n"
        "    chunks bigint NOT NULL DEFAULT 0,\n"
        "    state text NOT NULL DEFAULT 'running',\n"
        "    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
        "    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
        "    finished_at timestamptz\n"
        ");\n"
    )
