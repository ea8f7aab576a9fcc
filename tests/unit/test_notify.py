"""Unit tests for ``fairway.domain.notify``: binding keys per role, names, session queues."""

from __future__ import annotations

from typing import Any

import pytest

from fairway.domain import notify
from fairway.kernel.settings import Settings


def test_operator_sees_every_tenant_and_only_its_own_jobs() -> None:
    assert notify.binding_keys("operator", None, "root", ["ignored"]) == {
        "telemetry.#",
        "alert.#",
        "status.#",
        "job.*.root",
    }


def test_admin_sees_its_tenant_only() -> None:
    assert notify.binding_keys("admin", "acme", "ann", []) == {
        "telemetry.acme.*",
        "alert.acme.*",
        "status.acme.*",
        "job.acme.ann",
    }


def test_viewer_sees_its_jobs_and_the_devices_it_follows() -> None:
    assert notify.binding_keys("viewer", "acme", "vic", []) == {"job.acme.vic"}
    assert notify.binding_keys("viewer", "acme", "vic", ["d1", "d2"]) == {
        "job.acme.vic",
        "telemetry.acme.d1",
        "alert.acme.d1",
        "status.acme.d1",
        "telemetry.acme.d2",
        "alert.acme.d2",
        "status.acme.d2",
    }


@pytest.mark.parametrize(
    ("role", "tenant", "user", "subs"),
    [
        ("viewer", "acme", "vic", ["#"]),  # a wildcard device would see the whole tenant
        ("viewer", "acme", "vic", ["d1.x"]),
        ("viewer", "acme", "vic", ["*"]),
        ("admin", "*", "ann", []),
        ("admin", "ac.me", "ann", []),
        ("viewer", "acme", "v.i", []),
        ("viewer", "acme", "#", []),
        ("admin", None, "ann", []),  # an admin needs a tenant
        ("owner", "acme", "ann", []),  # unknown role
    ],
)
def test_bad_input_cannot_widen_a_binding(
    role: str, tenant: str | None, user: str, subs: list[str]
) -> None:
    with pytest.raises(ValueError):
        notify.binding_keys(role, tenant, user, subs)


def test_user_exchange_name_and_validation() -> None:
    assert notify.user_exchange("ann") == "user.ann"
    with pytest.raises(ValueError):
        notify.user_exchange("a.b")


class RecordingChannel:
    """Records the AMQP calls ``sync_user``/``remove_user`` make."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda **kw: self.calls.append((name, kw))


def test_sync_user_binds_new_keys_and_unbinds_gone_ones() -> None:
    channel = RecordingChannel()
    notify.sync_user(
        channel, "vic", {"job.acme.vic", "telemetry.acme.d1"}, {"job.acme.vic", "telemetry.acme.d2"}
    )  # type: ignore[arg-type]
    assert channel.calls == [
        ("exchange_declare", {"exchange": "user.vic", "exchange_type": "fanout", "durable": False}),
        (
            "exchange_bind",
            {"destination": "user.vic", "source": "events", "routing_key": "telemetry.acme.d2"},
        ),
        (
            "exchange_unbind",
            {"destination": "user.vic", "source": "events", "routing_key": "telemetry.acme.d1"},
        ),
    ]


def test_session_queue_is_bounded_short_lived_and_keeps_the_newest() -> None:
    settings = Settings(session_queue_max_length=50, session_queue_message_ttl_ms=5000)
    a, b = notify.session_queue(settings, "vic"), notify.session_queue(settings, "vic")
    assert a.name != b.name and a.name.startswith("session.vic.")
    assert a.exchange == "user.vic"
    assert a.declare_kwargs() == {
        "queue": a.name,
        "durable": False,
        "exclusive": True,
        "auto_delete": True,
        "arguments": {"x-max-length": 50, "x-overflow": "drop-head", "x-message-ttl": 5000},
    }
