"""Metrics of every broker connection, whatever the process: up, opened per address, failovers.

Labels are bounded: ``connection`` is the connection's name (a handful per process,
e.g. ``fairway-scheduler`` and ``fairway-scheduler-events``), ``broker`` one of the
``host:port`` addresses in ``FAIRWAY_AMQP_URL``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTED = Gauge(
    "fairway_amqp_connected", "1 while the named broker connection is open", ["connection"]
)
CONNECTS = Counter(
    "fairway_amqp_connects_total",
    "Broker connections opened, by connection name and broker address",
    ["connection", "broker"],
)
FAILOVERS = Counter(
    "fairway_amqp_failovers_total",
    "Times a connection, lost or refused, moved on to the next broker address",
    ["connection"],
)
