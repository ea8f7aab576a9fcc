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

from fairway.kernel import topology
from fairway.kernel.contract import split_reading_id
from fairway.storage import mongo, registry
from tests.harness import Pipeline, reading, reading_query

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
    registry.set_device_enabled(edge.db, "dev-off", False)
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
    time.sleep(1)  # room for a wrongly routed message to be stored: nothing to wait for
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


def test_an_mqtt_device_publishes_a_batch_whose_bad_reading_alone_is_refused(
    edge: Pipeline,
) -> None:
    creds = edge.device("acme", "mqtt-2")
    port = int(os.environ.get("FAIRWAY_RABBITMQ_MQTT_PORT", "1883"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mqtt-2")
    client.username_pw_set(f"{edge.name}:mqtt-2", creds["password"])
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: rc == 0 and connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    now = time.time()
    batch = {
        "readings": [
            {"ts": now - 2, "values": {"temp": 19.0}},
            {"ts": now - 1, "values": {}},  # schema: no values
            {"ts": now, "values": {"temp": 19.5}, "id": "r-2"},
        ]
    }
    try:
        assert connected.wait(10), "MQTT connection refused"
        info = client.publish("mqtt-2/env", orjson.dumps(batch), qos=1)
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    edge.wait_stored(2, device="mqtt-2", stream="env")
    # MQTT carries no message id: a reading without its own id is <stream>@<ts in ms>.
    found = edge.db[mongo.TELEMETRY].find(reading_query(device="mqtt-2"), {"_id": 1})
    ids = {split_reading_id(d["_id"])[2] for d in found}
    assert ids == {f"env@{round((now - 2) * 1000)}", "r-2"}
    [(headers, _body)] = edge.rejected(1)
    assert headers[topology.REASON_HEADER] == "schema"
    assert headers[topology.INDEX_HEADER] == 1


def test_disabling_a_device_closes_its_open_connection(edge: Pipeline) -> None:
    """The broker caches logins; the API closes the device's live connection at once."""
    from fairway.storage import accounts
    from web import create_app

    creds = edge.device("acme", "dev-live")
    accounts.create_user(edge.db, "boss", "boss password 123", accounts.ADMIN, "acme")
    token = accounts.create_api_token(edge.db, "boss", 60)
    api = create_app({"FAIRWAY_SETTINGS": edge.settings, "TESTING": True}).test_client()
    with edge.channel("dev-live", creds["password"]) as channel:
        channel.basic_publish("telemetry", "dev-live.env", orjson.dumps(reading()))
        edge.wait_stored(1, device="dev-live")
        answer = api.post(
            "/api/devices/dev-live/disable", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200 and answer.get_json()["connections_closed"] == 1
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            for _ in range(50):  # the close reaches this client within a round trip or two
                channel.connection.process_data_events(time_limit=0.1)
                channel.basic_publish("telemetry", "dev-live.env", orjson.dumps(reading()))
    # The broker's auth cache may still admit a new login for up to its TTL (60 s);
    # what such a connection publishes is refused by the relay, with its reason.
    time.sleep(edge.settings.device_cache_ttl_s + 0.2)
    try:
        edge.publish([("dev-live.env", reading(), {})], "dev-live", creds["password"])
    except REFUSED_AT_LOGIN:
        return  # the cache entry had already expired: refused at the door
    (headers, _body), *_ = edge.rejected(1)
    assert headers["x-fairway-reason"] == "device_disabled"
    assert edge.stored(device="dev-live") == 1
