"""Fairway: fair, exactly-once-in-effect IoT telemetry ingestion on RabbitMQ and MongoDB."""

__version__ = "0.1.0"
