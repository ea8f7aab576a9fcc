"""Prometheus metrics of the auth/relay consumer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RELAY_ACCEPTED = Counter(
    "fairway_relay_accepted_total",
    "Readings accepted and confirmed into a tenant queue",
    ["tenant"],
)


RELAY_REJECTED = Counter(
    "fairway_relay_rejected_total", "Messages refused and confirmed into rejected", ["reason"]
)


RELAY_REJECTED_DROPPED = Counter(
    "fairway_relay_rejected_dropped_total",
    "Refused messages that the full rejected queue did not take (counted, then acked)",
    ["reason"],
)


RELAY_REJECTED_OVER_BUDGET = Counter(
    "fairway_relay_rejected_over_budget_total",
    "Refused messages beyond their device's or tenant's refusal budget (counted, acked, not kept)",
    ["tenant", "reason"],
)


RELAY_UNCONFIRMED = Gauge(
    "fairway_relay_unconfirmed", "Republished messages awaiting the broker's confirm"
)


RELAY_PARKED = Gauge("fairway_relay_parked", "Deliveries waiting for a device registry look-up")
