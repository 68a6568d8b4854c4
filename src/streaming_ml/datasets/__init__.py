"""Listings as data: CSV cleaning, the synthetic generator, and reads and inserts in Postgres."""
