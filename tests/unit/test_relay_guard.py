"""A validator bug refuses the message instead of crashing the relay's I/O loop."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fairway.kernel.reasons import Reason
from fairway.kernel.settings import Settings
from ingest import relay as relay_module
from ingest.relay import Relay

Published = list[tuple[str, str, Any]]  # (exchange, routing key, pending refusal)


def publishing_relay(monkeypatch: pytest.MonkeyPatch) -> tuple[Relay, Published]:
    """A relay without a broker whose publishes are recorded."""
    relay = Relay(Settings(), db=None)  # type: ignore[arg-type]
    published: Published = []
    monkeypatch.setattr(
        relay,
        "_publish",
        lambda exchange, key, body, pending, headers=None: published.append(
            (exchange, key, pending)
        ),
    )
    return relay, published


def deliver(relay: Relay, tag: int, routing_key: str | bytes) -> None:
    """One delivery of ``{}`` under ``routing_key``, as pika hands it to the relay."""
    method = SimpleNamespace(delivery_tag=tag, routing_key=routing_key, consumer_tag="c")
    props = SimpleNamespace(message_id=None, user_id=None)
    relay._on_message(None, method, props, b"{}")  # type: ignore[arg-type]


def test_an_unexpected_validation_error_becomes_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(relay_module, "parse_message", broken)
    relay, published = publishing_relay(monkeypatch)
    deliver(relay, 1, "dev-1.env")

    [(exchange, key, pending)] = published
    assert exchange == "rejected"
    assert key == "schema.dev-1"
    assert pending.reason is Reason.SCHEMA
    assert pending.delivery.tag == 1
    relay.registry.close()


def test_a_routing_key_that_is_not_utf8_is_refused_not_a_poison_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pika gives such a key as bytes; the relay raised on it on every redelivery."""
    relay, published = publishing_relay(monkeypatch)
    deliver(relay, 7, b"dev-1.\xff\xfe")

    [(exchange, _key, pending)] = published
    assert exchange == "rejected"
    assert pending.reason is Reason.BAD_ROUTING_KEY
    assert pending.delivery.tag == 7
    relay.registry.close()
