"""MQTT client ids are bound to the device that logs in (RabbitMQ's MQTT plugin, real
broker, the web app answering its HTTP auth backend).

RabbitMQ 3.10 keeps one connection per MQTT client id and vhost: a second connection
with the same client id closes the first. All devices share Fairway's vhost, so before
this rule device B, with its own valid credentials, could connect with device A's client
id and kick A off, in a loop (reproduced: A got "Unspecified error" and was gone).
RabbitMQ sends the client id to ``/broker/user`` as ``client_id``; the web app now
refuses a client id that is not ``<device>`` or ``<device>.<suffix>``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.harness import Pipeline, reading, scrape_metric, wait_for

PORT = int(os.environ.get("FAIRWAY_RABBITMQ_MQTT_PORT", "1883"))
REFUSED = "fairway_broker_auth_refused_total"


class Device:
    """One paho MQTT client: its CONNACK and whether the broker dropped it later."""

    def __init__(self, vhost: str, device: str, password: str, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(f"{vhost}:{device}", password)
        self.client.reconnect_delay_set(300, 300)  # no automatic reconnect during a test
        self.answered = threading.Event()
        self.dropped = threading.Event()
        self.reason: mqtt.ReasonCode | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.dropped.set()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object):  # type: ignore[no-untyped-def]
        self.reason = rc
        self.answered.set()

    def connect(self, attempts: int = 1) -> bool:
        """True if the broker accepted the connection (within ``attempts`` tries)."""
        self.client.connect("127.0.0.1", PORT)
        for attempt in range(attempts):
            if attempt:
                self.client.loop_stop()
                self.answered.clear()
                self.client.reconnect()
            self.client.loop_start()
            assert self.answered.wait(15), "no CONNACK"
            assert self.reason is not None
            if not self.reason.is_failure:
                return True
        return False

    def connects(self) -> bool:
        """For logins that must succeed: a second try, as a real device would make.

        The broker's HTTP auth backend is one port for the whole machine (8080), and a
        legitimate login was refused once in a full run while other test runs were
        starting and stopping web apps there; the refusals under test are never retried.
        """
        return self.connect(attempts=2)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def refused(pipeline: Pipeline, tenant: str) -> float:
    """The web app's count of client-id refusals for ``tenant`` (its /metrics lives on the
    web port today, on the metrics port once it moves there)."""
    for port in (pipeline.procs["web"].metrics_port, pipeline.settings.web_port):
        try:
            return scrape_metric(port, REFUSED, tenant=tenant, reason="client_id_mismatch")
        except OSError:
            continue
    raise AssertionError("the web app serves no metrics")


@contextmanager
def device(pipeline: Pipeline, creds: dict[str, str], client_id: str) -> Iterator[Device]:
    d = Device(pipeline.name, creds["username"], creds["password"], client_id)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def edge(pipeline: Pipeline) -> Pipeline:
    pipeline.tenant("acme")
    pipeline.tenant("other")
    pipeline.start("web")
    return pipeline


def test_a_device_cannot_take_over_another_devices_client_id(edge: Pipeline) -> None:
    a = edge.device("acme", "dev-a")
    b = edge.device("other", "dev-b")  # another tenant's device, valid credentials
    with device(edge, a, "dev-a") as victim:
        assert victim.connects()
        for stolen in ("dev-a", "dev-a.1"):
            with device(edge, b, stolen) as attacker:
                assert not attacker.connect(), f"{stolen} was accepted for dev-b"
        # The victim was never kicked off, and still publishes.
        assert not victim.dropped.wait(2)
        info = victim.client.publish("dev-a/env", orjson.dumps(reading()), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    assert refused(edge, "other") >= 2  # at least once per attempt
    assert refused(edge, "acme") == 0


@pytest.mark.parametrize("client_id", ["dev-b", "dev-b.backup", "dev-b.x.y"])
def test_a_device_connects_with_its_own_client_ids(edge: Pipeline, client_id: str) -> None:
    b = edge.device("other", "dev-b")
    with device(edge, b, client_id) as d:
        assert d.connects()


@pytest.mark.parametrize("client_id", ["dev-bx", "dev-b-2", "dev-b.", "x.dev-b", ""])
def test_other_client_ids_are_refused(edge: Pipeline, client_id: str) -> None:
    """``dev-b-2`` would be device ``dev-b-2``'s own id: ``-`` cannot be the separator.
    An empty client id is refused too (RabbitMQ would make up a random one)."""
    b = edge.device("other", "dev-b")
    with device(edge, b, client_id) as d:
        assert not d.connect()


def test_prefix_devices_cannot_claim_each_others_ids(edge: Pipeline) -> None:
    """Device ``dev`` cannot use ``dev-2`` (device ``dev-2``'s id) and vice versa."""
    short = edge.device("acme", "dev")
    long = edge.device("acme", "dev-2")
    with device(edge, long, "dev-2") as owner:
        assert owner.connects()
        with device(edge, short, "dev-2") as claimer:
            assert not claimer.connect()
        with device(edge, long, "dev") as reverse:
            assert not reverse.connect()
        assert not owner.dropped.wait(1)
    wait_for(lambda: refused(edge, "acme") >= 2, 10, "both refusals counted")
