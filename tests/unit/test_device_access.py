"""Where the registry page tells devices to connect (web.manage.device_access)."""

from __future__ import annotations

import pytest

from fairway.kernel.settings import Settings, SettingsError
from web.manage import device_access


def test_defaults_come_from_the_broker_url_without_its_credentials() -> None:
    settings = Settings.from_env({}, amqp_url="amqp://fairway:s3cret@10.0.0.5:5673/fairway")
    access = device_access(settings)
    assert access == {
        "amqp": {"tls": False, "host": "10.0.0.5", "port": 5673, "vhost": "fairway"},
        "mqtt": {"tls": False, "host": "10.0.0.5", "port": 1883},
        "exchange": "telemetry",
    }
    assert "s3cret" not in repr(access) and "fairway:" not in repr(access)


def test_the_default_vhost_and_port_and_the_first_of_several_brokers() -> None:
    settings = Settings.from_env(
        {}, amqp_url="amqp://guest:guest@node-a/%2F,amqp://guest:guest@node-b/%2F"
    )
    access = device_access(settings)
    assert access["amqp"] == {"tls": False, "host": "node-a", "port": 5672, "vhost": "/"}
    assert access["mqtt"]["host"] == "node-a"


def test_public_addresses_with_tls_win() -> None:
    settings = Settings.from_env(
        {},
        amqp_url="amqp://fairway:x@rabbitmq:5672/fairway",
        device_amqp_url="amqps://iot.example.com/fairway",
        device_mqtt_url="mqtts://mqtt.example.com",
    )
    access = device_access(settings)
    assert access["amqp"] == {
        "tls": True,
        "host": "iot.example.com",
        "port": 5671,
        "vhost": "fairway",
    }
    assert access["mqtt"] == {"tls": True, "host": "mqtt.example.com", "port": 8883}
    pathless = Settings.from_env(
        {}, amqp_url="amqp://fairway:x@rabbitmq/fairway", device_amqp_url="amqp://iot:5000"
    )
    assert device_access(pathless)["amqp"]["vhost"] == "fairway"


def test_other_schemes_are_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="FAIRWAY_DEVICE_MQTT_URL"):
        Settings.from_env({"FAIRWAY_DEVICE_MQTT_URL": "http://x:1883"})
    with pytest.raises(SettingsError, match="FAIRWAY_DEVICE_AMQP_URL"):
        Settings.from_env({"FAIRWAY_DEVICE_AMQP_URL": "mqtt://x"})
