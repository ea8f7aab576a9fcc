"""Serving Prometheus metrics; each process defines its own in its ``metrics`` module.

Labels are bounded: ``tenant`` by the number of provisioned tenants, ``reason`` by
:class:`fairway.kernel.reasons.Reason`. Each process serves them on ``FAIRWAY_METRICS_PORT``.
"""

from __future__ import annotations

from prometheus_client import start_http_server


def serve(port: int) -> None:
    """Expose metrics over HTTP on ``port`` (0 means do not serve)."""
    if port:
        start_http_server(port)
