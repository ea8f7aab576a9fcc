"""Serving Prometheus metrics; each process defines its own in its ``metrics`` module.

Labels are bounded: ``tenant`` by the number of provisioned tenants, ``reason`` by
:class:`fairway.kernel.reasons.Reason`. Each process serves them on ``FAIRWAY_METRICS_PORT``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import start_http_server


def serve(port: int) -> None:
    """Expose metrics over HTTP on ``port`` (0 means do not serve)."""
    if port:
        start_http_server(port)


class ChildCache:
    """One labelled metric's children, each looked up once per label tuple.

    ``metric.labels(...)`` costs a few microseconds (a lock and a dict built per call);
    hot paths that count per reading or per delivery keep the children instead.
    Bounded like the labels themselves (see the module docstring).
    """

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        """The child for ``labels``, created on first use."""
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child
