-- The publication Debezium reads through pgoutput. Created here, by the table owner, so the
-- connector (publication.autocreate.mode=disabled) needs no CREATE privilege. Idempotent.
\connect cars
SET ROLE cars_app;
SELECT 'CREATE PUBLICATION car_listings_pub FOR TABLE public.car_listings'
WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'car_listings_pub') \gexec
RESET ROLE;
