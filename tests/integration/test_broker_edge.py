"""Devices authenticated by RabbitMQ itself, against Fairway's registry (AMQP and MQTT).

The broker (configured by scripts/services.sh) asks ``fairway web`` at
FAIRWAY_WEB_PORT; these tests run that web app on the test's own database.
"""

from __future__ import annotations

import os
import threading
import time

import orjson
import paho.mqtt.client as mqtt
import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

from fairway import store
from tests.harness import Pipeline, reading

pytestmark = pytest.mark.integration
REFUSED_AT_LOGIN = (ProbableAuthenticationError, ProbableAccessDeniedError)


@pytest.fixture
def edge(pipeline: Pipeline) -> Pipeline:
    pipeline.tenant("acme")
    pipeline.start("web")
    pipeline.start("relay")
    pipeline.start("scheduler")
    return pipeline


def test_a_device_with_its_credentials_publishes_and_is_stored(edge: Pipeline) -> None:
    creds = edge.device("acme", "dev-1")
    edge.publish(
        [("dev-1.env", reading(), {"message_id": "a", "user_id": "dev-1"})],
        creds["username"],
        creds["password"],
    )
    edge.wait_stored(1, device="dev-1")


def test_a_wrong_password_is_refused_by_the_broker(edge: Pipeline) -> None:
    creds = edge.device("acme", "dev-1")
    with pytest.raises(REFUSED_AT_LOGIN), edge.channel("dev-1", creds["password"] + "x"):
        pass


def test_a_disabled_device_is_refused_by_the_broker(edge: Pipeline) -> None:
    creds = edge.device("acme", "dev-off")
    store.set_device_enabled(edge.db, "dev-off", False)
    with pytest.raises(REFUSED_AT_LOGIN), edge.channel("dev-off", creds["password"]):
        pass


def test_a_device_cannot_publish_as_another_device(edge: Pipeline) -> None:
    creds = edge.device("acme", "dev-1")
    edge.device("acme", "dev-2")
    with pytest.raises(ChannelClosedByBroker) as refused:
        edge.publish([("dev-2.env", reading(), {})], "dev-1", creds["password"])
    assert refused.value.reply_code == 403
    with (
        pytest.raises(ChannelClosedByBroker) as refused,
        edge.channel("dev-1", creds["password"]) as channel,
    ):
        channel.basic_publish("tenants", "acme", b"{}", pika.BasicProperties())
        channel.queue_declare("mine")  # a round trip, so the refusal arrives here
    assert refused.value.reply_code == 403
    time.sleep(1)
    assert edge.stored() == 0


def test_an_mqtt_device_publishes_a_reading_that_is_stored(edge: Pipeline) -> None:
    creds = edge.device("acme", "mqtt-1")
    port = int(os.environ.get("FAIRWAY_RABBITMQ_MQTT_PORT", "1883"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mqtt-1")
    # RabbitMQ's MQTT plugin takes the vhost from a "vhost:user" user name.
    client.username_pw_set(f"{edge.name}:mqtt-1", creds["password"])
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: rc == 0 and connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "MQTT connection refused"
        info = client.publish("mqtt-1/env", orjson.dumps(reading(temp=19.0)), qos=1)
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    edge.wait_stored(1, device="mqtt-1", stream="env")
