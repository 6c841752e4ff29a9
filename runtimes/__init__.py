"""Adapters and lifecycle: Kafka, PostgreSQL, HTTP, metrics, the facade and the CLI."""
