"""What the demo needs before it starts anything: a secret key, free ports, live services.

Each check returns a sentence per problem (empty: fine), so the demo can print them all
at once and exit before printing, starting or provisioning anything.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from pymongo import MongoClient

from fairway.amqp import management
from fairway.amqp.connection import blocking_channel
from fairway.kernel.settings import Settings

HINT = "start the local services with `make services` (or scripts/services.sh up)"


def secret_problems(settings: Settings) -> list[str]:
    """The web app and the gateway refuse to start without a signing key of 16+ characters."""
    try:
        settings.require_secret()
    except RuntimeError as exc:
        return [str(exc) + " (`make demo` sets a development key)"]
    return []


def port_problems(host: str, ports: Iterable[tuple[str, int]]) -> list[str]:
    """Each (what, port) that cannot be bound on ``host`` (in use, or not allowed)."""
    problems = []
    for what, port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                problems.append(
                    f"port {port} on {host} ({what}) is not free: {exc.strerror}; stop what "
                    f"uses it or choose another port ({_variable(what)})"
                )
    return problems


def _variable(what: str) -> str:
    return {"web": "FAIRWAY_WEB_PORT", "gateway": "FAIRWAY_GATEWAY_PORT"}.get(
        what, "FAIRWAY_BROKER_AUTH_PORT"
    )


def service_problems(settings: Settings, timeout_s: float = 5.0) -> list[str]:
    """RabbitMQ (AMQP and its management API) and MongoDB answer."""
    problems = []
    try:
        with blocking_channel(settings, "fairway-demo-check"):
            pass
    except Exception as exc:
        problems.append(f"RabbitMQ does not answer at {_safe(settings.amqp_url)}: {exc!r}; {HINT}")
    try:
        management.call(settings.rabbitmq_mgmt_url, "GET", "overview?columns=rabbitmq_version")
    except Exception as exc:
        problems.append(
            f"RabbitMQ's management API does not answer at {_safe(settings.rabbitmq_mgmt_url)}"
            f" (the monitor and the Tenants page need it): {exc!r}; {HINT}"
        )
    client: MongoClient = MongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=int(timeout_s * 1000)
    )
    try:
        client.admin.command("ping")
    except Exception as exc:
        problems.append(f"MongoDB does not answer at {_safe(settings.mongo_url)}: {exc!r}; {HINT}")
    finally:
        client.close()
    return problems


def _safe(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}@{host}"
