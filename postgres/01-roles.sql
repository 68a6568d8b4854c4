-- Roles and databases of the pipeline. Shared by `streaming-ml stack up` and the compose file;
-- run by psql as the superuser. Idempotent. Passwords are set by the launcher (never in git).
--   cars_app   owns the tables; used by people, the demo and the bridge's checks
--   cars_cdc   Debezium source: LOGIN REPLICATION + SELECT on car_listings only
--   cars_sink  Debezium JDBC sinks: read/write on the four tables they fill only
--   registry   Apicurio Registry storage (its own database)
--   cars_reader reads the tables and the replication slot's health: the dashboard, `connectors watch`
SELECT 'CREATE ROLE cars_app LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cars_app') \gexec
SELECT 'CREATE ROLE cars_cdc LOGIN REPLICATION'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cars_cdc') \gexec
SELECT 'CREATE ROLE cars_sink LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cars_sink') \gexec
SELECT 'CREATE ROLE registry LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'registry') \gexec
SELECT 'CREATE ROLE cars_reader LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cars_reader') \gexec

SELECT 'CREATE DATABASE cars OWNER cars_app'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'cars') \gexec
SELECT 'CREATE DATABASE registry OWNER registry'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'registry') \gexec

-- Only the roles that need a database may connect to it.
REVOKE CONNECT ON DATABASE cars FROM PUBLIC;
GRANT CONNECT ON DATABASE cars TO cars_app, cars_cdc, cars_sink, cars_reader;
REVOKE CONNECT ON DATABASE registry FROM PUBLIC;
GRANT CONNECT ON DATABASE registry TO registry;
