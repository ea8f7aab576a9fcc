"""Several broker addresses: the setting's rules, the failover order, the metrics, and the
management API client's failover (against a local HTTP server: no broker needed)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fairway.amqp import management
from fairway.amqp.connection import Brokers, address, kombu_url, parameters
from fairway.kernel.settings import Settings, SettingsError

NODES = "amqp://u:p@n1:5672/fw,amqp://u:p@n2:5673/fw,amqp://u:p@n3/fw"


def test_one_url_is_a_list_of_one() -> None:
    assert Settings().amqp_urls == ["amqp://guest:guest@127.0.0.1:5672/%2F"]


def test_several_urls_are_split_and_trimmed() -> None:
    s = Settings.from_env({"FAIRWAY_AMQP_URL": NODES.replace(",", " , ")})
    assert s.amqp_urls == NODES.split(",")
    assert s.vhost == "fw"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("amqp://a/x,amqp://b/y", "names different vhosts"),
        ("amqp://a/,amqps://b/", "mixes URL schemes"),
        ("amqp://a:1/,amqp://a:1/", "lists a broker address twice"),
        ("amqp://a/,", "has an entry '' that must be a URL"),
        ("amqp://a/,http://u:secret@b/", "has an entry 'http://u:***@b/'"),
    ],
)
def test_a_bad_list_is_refused_at_start(value: str, why: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FAIRWAY_AMQP_URL": value})
    assert why in str(info.value)
    assert "secret" not in str(info.value)


def test_the_default_vhost_spelled_two_ways_is_one_vhost() -> None:
    assert Settings(amqp_url="amqp://a/,amqp://b/%2F").vhost == "/"


def test_management_and_celery_take_lists_too() -> None:
    s = Settings.from_env(
        {
            "FAIRWAY_RABBITMQ_MGMT_URL": "http://g:g@a:15672,http://g:g@b:15673",
            "FAIRWAY_CELERY_BROKER_URL": "amqp://a/jobs,amqp://b/jobs",
        }
    )
    assert s.rabbitmq_mgmt_urls == ["http://g:g@a:15672", "http://g:g@b:15673"]
    assert kombu_url(s.celery_broker_url) == "amqp://a/jobs;amqp://b/jobs"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_failover_walks_the_list_and_wraps() -> None:
    brokers = Brokers(Settings(amqp_url=NODES), "t-walk")
    seen = [brokers.address]
    for _ in range(3):
        brokers.lost()
        seen.append(brokers.address)
    assert seen == ["n1:5672", "n2:5673", "n3:5672", "n1:5672"]
    assert _sample("fairway_amqp_failovers_total", connection="t-walk") == 3
    assert brokers.parameters().host == "n1"


def test_a_working_connection_stays_and_is_counted() -> None:
    brokers = Brokers(Settings(amqp_url=NODES), "t-stay")
    brokers.lost()
    brokers.opened()
    assert brokers.address == "n2:5673"
    assert _sample("fairway_amqp_connected", connection="t-stay") == 1
    assert _sample("fairway_amqp_connects_total", connection="t-stay", broker="n2:5673") == 1
    assert brokers.in_order() == [NODES.split(",")[i] for i in (1, 2, 0)]
    brokers.lost()
    assert _sample("fairway_amqp_connected", connection="t-stay") == 0


def test_one_address_never_fails_over() -> None:
    brokers = Brokers(Settings(), "t-one")
    brokers.lost()
    assert brokers.index == 0
    assert _sample("fairway_amqp_failovers_total", connection="t-one") == 0


def test_each_address_keeps_its_own_credentials_and_the_vhost_can_be_replaced() -> None:
    settings = Settings(amqp_url="amqp://a:1@n1/fw,amqp://b:2@n2/fw")
    assert parameters(settings, "x", settings.amqp_urls[1]).credentials.username == "b"
    feed = Brokers(settings, "t-feed", vhost="/")
    assert feed.parameters().virtual_host == "/"
    assert address("amqps://h") == "h:5671" and address("amqp://[::1]:5") == "[::1]:5"


# -- the management API client ---------------------------------------------------------
class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 404 if self.path.endswith("/missing") else 200
        body = json.dumps({"path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://g:g@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _dead() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://g:g@127.0.0.1:{s.getsockname()[1]}"  # closed: refused


def test_a_management_call_goes_to_the_next_node_when_one_is_down(api: str) -> None:
    assert management.call(f"{_dead()},{api}", "GET", "overview") == {"path": "/api/overview"}


def test_an_http_error_is_an_answer_not_a_reason_to_fail_over(api: str) -> None:
    import urllib.error

    with pytest.raises(urllib.error.HTTPError):
        management.call(f"{api},{_dead()}", "GET", "queues/missing")


def test_every_node_down_raises_the_last_error() -> None:
    with pytest.raises(OSError):
        management.call(f"{_dead()},{_dead()}", "GET", "overview")
