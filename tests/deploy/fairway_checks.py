"""Fairway run on this machine against services on the test hosts: the CLI, processes,
a device publishing over AMQP(S) and MQTT, and what the database then holds."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pika
from pymongo import MongoClient

from fairway.amqp.connection import blocking_channel
from fairway.devtools.processes import wait_for
from fairway.kernel import topology
from fairway.kernel.contract import split_reading_id
from fairway.kernel.settings import Settings
from tests.harness import FairwayProcess, reading_query, start_process

# Faster than production so tests need not wait (as in tests/integration).
FAST = {"tenant_refresh_s": 0.5, "device_cache_ttl_s": 1.0}


def settings(**overrides: Any) -> Settings:
    """This machine's test settings (FerretDB, secret key from the environment) changed."""
    return Settings.from_env(dict(os.environ), **{**FAST, **overrides})


def cli(config: Settings, *args: str) -> Any:
    """``fairway <args>`` as a child process; its JSON output."""
    result = subprocess.run(
        [sys.executable, "-m", "fairway", *args],
        env={**os.environ, **config.environ()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"fairway {' '.join(args)}: {result.stderr[-3000:]}"
    return orjson.loads(result.stdout)


def answers(host: str, port: int) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start(command: str, config: Settings, logs: Path, listen: str = "") -> FairwayProcess:
    """Start ``fairway <command>``; wait until its metrics port (or ``host:port``) answers."""
    child = start_process([command], config, logs / f"{command}.log")
    host, _, port = listen.rpartition(":")
    if not listen:
        host, port = "127.0.0.1", str(child.metrics_port)
    try:
        wait_for(lambda: answers(host, int(port)) or not child.alive(), 60, f"{command} to start")
        assert child.alive(), (logs / f"{command}.log").read_text()[-3000:]
    except BaseException:
        child.stop()
        raise
    return child


@contextmanager
def running(config: Settings, logs: Path, *commands: str, web: str = "") -> Iterator[None]:
    """``fairway <command>`` for each command (``web`` listening on ``web``) in a block."""
    children: list[FairwayProcess] = []
    try:
        for command in commands:
            listen = web if command == "web" else ""
            children.append(start(command, config, logs, listen))
        yield
    finally:
        for child in children:
            child.stop()


def with_user(url: str, user: str, password: str) -> str:
    """``url`` with other credentials."""
    parts = urllib.parse.urlsplit(url)
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc + parts.netloc.rpartition("@")[2]))


def reading(mark: str) -> bytes:
    """A valid reading body whose message id is ``mark``."""
    return orjson.dumps({"ts": time.time(), "values": {"temp": 21.5}, "id": mark})


def publish_amqp(config: Settings, device: str, password: str, mark: str) -> None:
    """Publish one reading as ``device`` (its own broker login) with a confirm."""
    as_device = Settings.from_env(
        config.environ(), amqp_url=with_user(config.amqp_url, device, password)
    )
    with blocking_channel(as_device, f"device-{device}") as channel:
        channel.confirm_delivery()
        channel.basic_publish(
            topology.TELEMETRY,
            f"{device}.env",
            reading(mark),
            pika.BasicProperties(delivery_mode=2, message_id=mark),
        )


def amqp_login_refused(config: Settings, device: str, password: str) -> bool:
    """True if the broker refuses ``device`` logging in with ``password``."""
    try:
        publish_amqp(config, device, password, "refused")
    except pika.exceptions.ProbableAuthenticationError:
        return True
    except pika.exceptions.AMQPConnectionError as exc:
        return "ACCESS_REFUSED" in repr(exc)
    return False


def publish_mqtt(
    host: str, port: int, vhost: str, device: str, password: str, mark: str, ca_file: str = ""
) -> None:
    """Publish one reading as ``device`` over MQTT (QoS 1, acknowledged by the broker)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    client.username_pw_set(f"{vhost}:{device}", password)
    if ca_file:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
    client.connect(host, port)
    client.loop_start()
    try:
        info = client.publish(f"{device}/env", reading(mark), qos=1)
        info.wait_for_publish(30)
        assert info.is_published(), f"MQTT publish as {device} was not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()


def stored(config: Settings, device: str, count: int, timeout: float = 60) -> list[dict]:
    """Wait until the database holds ``count`` readings of ``device``; return them."""
    client: MongoClient = MongoClient(config.mongo_url)
    try:
        db = client.get_default_database()
        query = reading_query(device=device)  # the device is in _id only
        wait_for(
            lambda: db["telemetry"].count_documents(query) >= count,
            timeout,
            f"{count} stored readings of {device}",
        )
        return [{**d, "msg_id": split_reading_id(d["_id"])[2]} for d in db["telemetry"].find(query)]
    finally:
        client.close()


def sse_events(response: http.client.HTTPResponse) -> Iterator[tuple[str, Any]]:
    """(name, decoded data) of each event on an SSE stream."""
    name, data = "message", []
    while True:
        line = response.readline().decode().rstrip("\r\n")
        if line == "":
            if data:
                yield name, orjson.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
