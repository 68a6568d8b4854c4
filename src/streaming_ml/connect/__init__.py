"""Kafka Connect from the outside: the REST client, connector commands and the watchdog."""
