"""Connection parameters and short-lived blocking connections to the broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pika
from pika.adapters.blocking_connection import BlockingChannel

from fairway.kernel import topology
from fairway.kernel.settings import Settings


def parameters(settings: Settings, name: str) -> pika.URLParameters:
    """Connection parameters from ``settings.amqp_url`` with a client name and heartbeat."""
    params = pika.URLParameters(settings.amqp_url)
    params.client_properties = {"connection_name": name, "product": "fairway"}
    if "heartbeat" not in settings.amqp_url:
        params.heartbeat = 30
    params.connection_attempts = 1
    params.blocked_connection_timeout = 300
    return params


@contextmanager
def blocking_channel(settings: Settings, name: str) -> Iterator[BlockingChannel]:
    """A channel on a short-lived blocking connection named ``name``, closed on exit."""
    connection = pika.BlockingConnection(parameters(settings, name))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def declare_topology(settings: Settings) -> None:
    """Declare the shared topology over a short-lived blocking connection."""
    with blocking_channel(settings, "fairway-declare") as channel:
        topology.declare(channel, settings)
