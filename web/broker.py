"""RabbitMQ for the web app: one blocking channel per request that needs one.

Only administrative requests (user and subscription changes) touch the broker, so a
short-lived connection per such request is simpler than sharing a pika connection,
which is not thread-safe, between waitress threads.
"""

from __future__ import annotations

import pika
from flask import Flask, current_app, g
from pika.adapters.blocking_connection import BlockingChannel

from fairway.amqp.connection import parameters


def init_app(app: Flask) -> None:
    """Close the request's connection when the request ends."""
    app.teardown_appcontext(_close)


def get_channel() -> BlockingChannel:
    """This request's channel (opened on first use)."""
    if "amqp" not in g:
        settings = current_app.config["FAIRWAY_SETTINGS"]
        g.amqp = pika.BlockingConnection(parameters(settings, "fairway-web"))
        g.amqp_channel = g.amqp.channel()
    return g.amqp_channel


def _close(_exc: BaseException | None) -> None:
    g.pop("amqp_channel", None)
    connection = g.pop("amqp", None)
    if connection is not None and connection.is_open:
        connection.close()
