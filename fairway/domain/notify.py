"""Per-user notification exchanges: the permission filter between ``events`` and browsers.

Every user has one fanout exchange ``user.<id>``, bound to the ``events`` topic
exchange by exchange-to-exchange bindings, one binding per permission (see
:func:`binding_keys`). Every browser session of the user gets its own queue bound to
``user.<id>``. So a permission change is one bind or unbind on the user's exchange,
whatever the number of open sessions, and deleting the exchange (:func:`remove_user`)
stops every session's feed at once.

Routing keys on ``events``: ``telemetry|status|alert.<tenant>.<device>`` and
``job.<tenant>.<user>``. Tenant, device and user ids are validated
(:mod:`fairway.kernel.ids`), so none can smuggle a ``.``, ``*`` or ``#`` into a binding key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pika.exceptions import ChannelClosedByBroker

from fairway.kernel.ids import check_id
from fairway.kernel.settings import Settings
from fairway.kernel.topology import EVENTS, queue_arguments
from fairway.storage.accounts import ADMIN, OPERATOR, VIEWER

USER_EXCHANGE_PREFIX = "user."
SESSION_QUEUE_PREFIX = "session."
DEVICE_KINDS = ("telemetry", "alert", "status")
JOB = "job"


class Channel(Protocol):
    """The part of ``pika.adapters.blocking_connection.BlockingChannel`` used here."""

    def exchange_declare(self, exchange: str, exchange_type: str = ..., **kw: Any) -> Any: ...
    def exchange_bind(self, destination: str, source: str, routing_key: str = ...) -> Any: ...
    def exchange_unbind(self, destination: str, source: str, routing_key: str = ...) -> Any: ...
    def exchange_delete(self, exchange: str, **kw: Any) -> Any: ...
    def queue_declare(self, queue: str, **kw: Any) -> Any: ...
    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = ...) -> Any: ...


def user_exchange(user_id: str) -> str:
    """``user.<id>``: the exchange every session of this user reads from."""
    return USER_EXCHANGE_PREFIX + check_id("user", user_id)


def binding_keys(
    role: str, tenant: str | None, user_id: str, subscriptions: Iterable[str] = ()
) -> set[str]:
    """The ``events`` routing keys (patterns) ``user.<id>`` is bound with for this role.

    operator: every tenant's telemetry, alerts and status, and its own jobs;
    admin: its tenant's telemetry, alerts and status, and its own jobs;
    viewer: its own jobs, and telemetry, alerts and status of the devices it follows.
    """
    check_id("user", user_id)
    if role == OPERATOR:
        return {f"{kind}.#" for kind in DEVICE_KINDS} | {f"{JOB}.*.{user_id}"}
    if role not in (ADMIN, VIEWER):
        raise ValueError(f"unknown role {role!r}")
    if tenant is None:
        raise ValueError(f"a {role} needs a tenant")
    check_id("tenant", tenant)
    keys = {f"{JOB}.{tenant}.{user_id}"}
    if role == ADMIN:
        return keys | {f"{kind}.{tenant}.*" for kind in DEVICE_KINDS}
    for device in subscriptions:
        check_id("device", device)
        keys |= {f"{kind}.{tenant}.{device}" for kind in DEVICE_KINDS}
    return keys


def declare_user(channel: Channel, user_id: str) -> str:
    """Declare ``user.<id>`` (transient fanout, idempotent); return its name.

    Transient on purpose: a user's bindings are derived state (the permissions live in
    MongoDB), and a durable binding is written to the broker's disk store before it is
    confirmed, which made a subscription change 2-4 times slower (docs/benchmarks.md,
    notify_fanout). A broker restart drops the exchange, and every session with it;
    the web app re-creates it, bindings and all, when a browser next asks for a push
    token (:func:`exchange_exists`), which reconnecting browsers do first.
    """
    name = user_exchange(user_id)
    channel.exchange_declare(exchange=name, exchange_type="fanout", durable=False)
    return name


def exchange_exists(connection: Any, user_id: str) -> bool:
    """Whether ``user.<id>`` exists, by a passive declare on a throwaway channel.

    ``connection`` is a pika ``BlockingConnection``: a failed passive declare closes
    its channel, so it gets one of its own.
    """
    channel = connection.channel()
    try:
        channel.exchange_declare(exchange=user_exchange(user_id), passive=True)
        return True
    except ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    finally:
        if channel.is_open:
            channel.close()


def sync_user(channel: Channel, user_id: str, current: set[str], desired: set[str]) -> None:
    """Declare ``user.<id>``, bind the keys in ``desired`` not in ``current``, unbind the rest.

    ``current`` is what the caller recorded as bound; ``events`` must exist (it is part
    of :func:`fairway.kernel.topology.declare`). Binding and unbinding are idempotent at the
    broker, so a superset in ``current`` is harmless.
    """
    name = declare_user(channel, user_id)
    for key in sorted(desired - current):
        channel.exchange_bind(destination=name, source=EVENTS, routing_key=key)
    for key in sorted(current - desired):
        channel.exchange_unbind(destination=name, source=EVENTS, routing_key=key)


def remove_user(channel: Channel, user_id: str) -> None:
    """Delete ``user.<id>``: its bindings go with it and every session's feed stops at once.

    Session queues stay (empty, bound to nothing) until their browser disconnects; the
    gateway refuses new sessions for a user without an exchange.
    """
    channel.exchange_delete(exchange=user_exchange(user_id))


@dataclass(frozen=True)
class SessionQueue:
    """The queue of one browser session: exclusive, auto-delete, bounded, short-lived."""

    name: str
    exchange: str
    max_length: int
    message_ttl_ms: int

    def arguments(self) -> dict[str, Any]:
        """Bounded; ``drop-head`` so a live feed that falls behind keeps the newest events."""
        return queue_arguments(
            self.max_length, "drop-head", extra={"x-message-ttl": self.message_ttl_ms}
        )

    def declare_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``queue_declare`` (blocking or Twisted channel alike)."""
        return {
            "queue": self.name,
            "durable": False,
            "exclusive": True,
            "auto_delete": True,
            "arguments": self.arguments(),
        }


def session_queue(settings: Settings, user_id: str) -> SessionQueue:
    """A new, uniquely named session queue spec for ``user_id``: ``session.<user>.<random>``."""
    return SessionQueue(
        name=f"{SESSION_QUEUE_PREFIX}{check_id('user', user_id)}.{uuid.uuid4().hex[:16]}",
        exchange=user_exchange(user_id),
        max_length=settings.session_queue_max_length,
        message_ttl_ms=settings.session_queue_message_ttl_ms,
    )
