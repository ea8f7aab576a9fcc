"""Stable reason codes for refused messages.

The codes are part of the public contract: they appear in the ``x-fairway-reason``
header of every message in ``rejected``, in metrics labels and in the API. Add new
codes; never rename or reuse one.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a message was refused."""

    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    SCHEMA = "schema"
    BAD_ROUTING_KEY = "bad_routing_key"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_DISABLED = "device_disabled"
    UNKNOWN_TENANT = "unknown_tenant"
    IDENTITY_MISMATCH = "identity_mismatch"
    CLOCK_SKEW = "clock_skew"
    RATE_LIMITED = "rate_limited"
    TENANT_BACKLOG_FULL = "tenant_backlog_full"
    UNROUTABLE = "unroutable"
    TOO_MANY_READINGS = "too_many_readings"
    TENANT_RATE_LIMITED = "tenant_rate_limited"


class Rejection(Exception):
    """A message refused for ``reason``; ``detail`` is a human-readable sentence."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
