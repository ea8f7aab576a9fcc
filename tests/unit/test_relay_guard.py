"""A validator bug refuses the message instead of crashing the relay's I/O loop."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fairway.kernel.reasons import Reason
from fairway.kernel.settings import Settings
from ingest import relay as relay_module
from ingest.relay import Relay


def test_an_unexpected_validation_error_becomes_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(relay_module, "parse_message", broken)
    relay = Relay(Settings(), db=None)  # type: ignore[arg-type]
    published: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(
        relay,
        "_publish",
        lambda exchange, key, body, pending, headers=None: published.append(
            (exchange, key, pending)
        ),
    )
    method = SimpleNamespace(delivery_tag=1, routing_key="dev-1.env", consumer_tag="c")
    props = SimpleNamespace(message_id=None, user_id=None)
    relay._on_message(None, method, props, b"{}")  # type: ignore[arg-type]

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
    relay = Relay(Settings(), db=None)  # type: ignore[arg-type]
    published: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(
        relay,
        "_publish",
        lambda exchange, key, body, pending, headers=None: published.append(
            (exchange, key, pending)
        ),
    )
    method = SimpleNamespace(delivery_tag=7, routing_key=b"dev-1.\xff\xfe", consumer_tag="c")
    props = SimpleNamespace(message_id=None, user_id=None)
    relay._on_message(None, method, props, b"{}")  # type: ignore[arg-type]

    [(exchange, _key, pending)] = published
    assert exchange == "rejected"
    assert pending.reason is Reason.BAD_ROUTING_KEY
    assert pending.delivery.tag == 7
    relay.registry.close()
