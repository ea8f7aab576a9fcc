"""Prometheus metrics of the push gateway."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SESSIONS = Gauge("fairway_gateway_sessions", "Open event streams")


DELIVERED = Counter("fairway_gateway_delivered_total", "Events written to browser streams")


SLOW_DISCONNECTS = Counter(
    "fairway_gateway_slow_disconnects_total",
    "Streams dropped because the client fell FAIRWAY_GATEWAY_CLIENT_BUFFER_BYTES behind",
)


AUTH_FAILURES = Counter(
    "fairway_gateway_auth_failures_total",
    "Stream requests refused for their push token",
    ["reason"],  # missing, invalid, expired
)


REFUSED = Counter(
    "fairway_gateway_refused_total",
    "Stream requests with a valid token that were refused",
    ["reason"],  # no_exchange, unavailable, full
)


BUFFERED_BYTES = Gauge(
    "fairway_gateway_buffered_bytes", "Bytes held for clients whose sockets are not draining"
)


REVOKED = Counter(
    "fairway_gateway_revoked_total", "Streams closed because their user's exchange was deleted"
)


AMQP_UP = Gauge("fairway_gateway_amqp_up", "1 while connected to RabbitMQ")
