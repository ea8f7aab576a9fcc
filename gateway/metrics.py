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
    # missing, invalid, expired (tenant ""); reused, predates_start (the token's tenant,
    # "" for operators)
    ["reason", "tenant"],
)


REFUSED = Counter(
    "fairway_gateway_refused_total",
    "Stream requests with a valid token that were refused",
    # no_exchange, unavailable, full, user_session_limit, tenant_session_limit,
    # token_memory_full; tenant of the token ("" for operators)
    ["reason", "tenant"],
)


BUFFERED_BYTES = Gauge(
    "fairway_gateway_buffered_bytes", "Bytes held for clients whose sockets are not draining"
)


REVOKED = Counter(
    "fairway_gateway_revoked_total", "Streams closed because their user's exchange was deleted"
)


AMQP_UP = Gauge("fairway_gateway_amqp_up", "1 while connected to RabbitMQ")
