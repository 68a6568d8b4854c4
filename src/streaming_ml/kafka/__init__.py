"""Kafka plumbing every wing shares: clients, topics, change parsing, offsets, transactions."""
