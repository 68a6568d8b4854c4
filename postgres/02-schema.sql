-- GENERATED from streaming_ml.schema.ddl (listings_ddl, table_ddl); a unit test keeps
-- this file equal to streaming_ml.stack.postgres.schema_sql(). Idempotent.
\connect cars
SET ROLE cars_app;
CREATE TABLE IF NOT EXISTS public.car_listings (
    id serial PRIMARY KEY,
    "model" text,
    "year" integer,
    "price" integer,
    "transmission" text,
    "mileage" integer,
    "fuelType" text,
    "tax" integer,
    "mpg" double precision,
    "engineSize" double precision
);
ALTER TABLE public.car_listings REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS public.car_price_predictions (
    listing_id bigint PRIMARY KEY,
    predicted_price double precision,
    model_tag text,
    features_hash text,
    source_lsn bigint,
    source_ts_ms bigint,
    kafka_ts_ms bigint,
    bridge_received_ts_ms bigint,
    predicted_ts_ms bigint,
    model_latency_ms double precision,
    end_to_end_ms double precision,
    model_name text,
    model_version text,
    arm text,
    base_price double precision,
    top1_feature text,
    top1_amount double precision,
    top2_feature text,
    top2_amount double precision,
    top3_feature text,
    top3_amount double precision,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS model_name text;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS model_version text;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS arm text;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS base_price double precision;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS top1_feature text;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS top1_amount double precision;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS top2_feature text;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS top2_amount double precision;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS top3_feature text;
ALTER TABLE public.car_price_predictions ADD COLUMN IF NOT EXISTS top3_amount double precision;
CREATE OR REPLACE FUNCTION public.car_price_predictions_stamp() RETURNS trigger AS $$
BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS car_price_predictions_stamp ON public.car_price_predictions;
CREATE TRIGGER car_price_predictions_stamp BEFORE INSERT OR UPDATE ON public.car_price_predictions
    FOR EACH ROW EXECUTE FUNCTION public.car_price_predictions_stamp();
CREATE TABLE IF NOT EXISTS public.car_price_predictions_shadow (
    listing_id bigint PRIMARY KEY,
    predicted_price double precision,
    model_tag text,
    features_hash text,
    source_lsn bigint,
    source_ts_ms bigint,
    kafka_ts_ms bigint,
    bridge_received_ts_ms bigint,
    predicted_ts_ms bigint,
    model_latency_ms double precision,
    end_to_end_ms double precision,
    model_name text,
    model_version text,
    arm text,
    base_price double precision,
    top1_feature text,
    top1_amount double precision,
    top2_feature text,
    top2_amount double precision,
    top3_feature text,
    top3_amount double precision,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS model_name text;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS model_version text;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS arm text;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS base_price double precision;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS top1_feature text;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS top1_amount double precision;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS top2_feature text;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS top2_amount double precision;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS top3_feature text;
ALTER TABLE public.car_price_predictions_shadow ADD COLUMN IF NOT EXISTS top3_amount double precision;
CREATE OR REPLACE FUNCTION public.car_price_predictions_shadow_stamp() RETURNS trigger AS $$
BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS car_price_predictions_shadow_stamp ON public.car_price_predictions_shadow;
CREATE TRIGGER car_price_predictions_shadow_stamp BEFORE INSERT OR UPDATE ON public.car_price_predictions_shadow
    FOR EACH ROW EXECUTE FUNCTION public.car_price_predictions_shadow_stamp();
CREATE TABLE IF NOT EXISTS public.car_price_outcomes (
    listing_id bigint,
    model_tag text,
    arm text,
    actual_price double precision,
    model_name text,
    model_version text,
    predicted_price double precision,
    error double precision,
    abs_pct_error double precision,
    label_lag_ms bigint,
    priced_ts_ms bigint,
    labelled_ts_ms bigint,
    evaluated_ts_ms bigint,
    features text,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (listing_id, model_tag, arm, actual_price)
);
CREATE OR REPLACE FUNCTION public.car_price_outcomes_stamp() RETURNS trigger AS $$
BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS car_price_outcomes_stamp ON public.car_price_outcomes;
CREATE TRIGGER car_price_outcomes_stamp BEFORE INSERT OR UPDATE ON public.car_price_outcomes
    FOR EACH ROW EXECUTE FUNCTION public.car_price_outcomes_stamp();
CREATE TABLE IF NOT EXISTS public.car_price_alerts (
    alert_id text PRIMARY KEY,
    kind text,
    feature text,
    model_tag text,
    arm text,
    score double precision,
    threshold double precision,
    source_partition integer,
    raised_ts_ms bigint,
    message text,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION public.car_price_alerts_stamp() RETURNS trigger AS $$
BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS car_price_alerts_stamp ON public.car_price_alerts;
CREATE TRIGGER car_price_alerts_stamp BEFORE INSERT OR UPDATE ON public.car_price_alerts
    FOR EACH ROW EXECUTE FUNCTION public.car_price_alerts_stamp();
CREATE TABLE IF NOT EXISTS public.car_price_reprice_jobs (
    job_id bigserial PRIMARY KEY,
    model_tag text NOT NULL,
    where_sql text NOT NULL DEFAULT '',
    rate double precision,
    last_id bigint NOT NULL DEFAULT 0,
    max_id bigint NOT NULL,
    total bigint NOT NULL,
    done bigint NOT NULL DEFAULT 0,
    chunks bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'running',
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
-- Least privilege: the CDC role reads the listings, the sinks write their tables,
-- the reader reads them all (the re-pricing jobs too: the dashboard's panel).
GRANT SELECT ON public.car_listings TO cars_cdc;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.car_price_predictions TO cars_sink;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.car_price_predictions_shadow TO cars_sink;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.car_price_outcomes TO cars_sink;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.car_price_alerts TO cars_sink;
GRANT SELECT ON public.car_listings TO cars_reader;
GRANT SELECT ON public.car_price_predictions TO cars_reader;
GRANT SELECT ON public.car_price_predictions_shadow TO cars_reader;
GRANT SELECT ON public.car_price_outcomes TO cars_reader;
GRANT SELECT ON public.car_price_alerts TO cars_reader;
GRANT SELECT ON public.car_price_reprice_jobs TO cars_reader;
RESET ROLE;
