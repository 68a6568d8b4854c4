"""Listings as data: CSV cleaning, the synthetic generator, reads and inserts in Postgres,
and the re-pricing jobs that touch them."""
