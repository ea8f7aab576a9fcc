"""The broker-auth endpoints' decisions, answered from the real device registry."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from fairway.storage import registry
from tests.harness import Pipeline
from web import create_app


@pytest.fixture
def client(pipeline: Pipeline) -> FlaskClient:
    return create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True}).test_client()


@pytest.fixture
def password(pipeline: Pipeline) -> str:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-2")
    return pipeline.device("acme", "dev-1")["password"]


def ask(client: FlaskClient, check: str, **form: str) -> str:
    response = client.post(f"/broker/{check}", data=form)
    assert response.status_code == 200
    return response.get_data(as_text=True)


# Changed in the database behind the web app's back: seen at once only without its
# cache (with it, within FAIRWAY_DEVICE_AUTH_CACHE_TTL_S; test_device_logins covers that).
@pytest.mark.settings(device_auth_cache_ttl_s=0)
def test_a_device_logs_in_only_with_its_current_password(
    pipeline: Pipeline, client: FlaskClient, password: str
) -> None:
    assert ask(client, "user", username="dev-1", password=password) == "allow"
    assert ask(client, "user", username="dev-1", password=password + "x") == "deny"
    assert ask(client, "user", username="dev-2", password=password) == "deny"
    assert ask(client, "user", username="ghost", password=password) == "deny"
    assert ask(client, "user", username="dev-1") == "deny"
    registry.set_device_enabled(pipeline.db, "dev-1", False)
    assert ask(client, "user", username="dev-1", password=password) == "deny"


def test_a_device_may_open_only_fairways_vhost(
    pipeline: Pipeline, client: FlaskClient, password: str
) -> None:
    assert ask(client, "vhost", username="dev-1", vhost=pipeline.name, ip="127.0.0.1") == "allow"
    assert ask(client, "vhost", username="dev-1", vhost="/", ip="127.0.0.1") == "deny"
    assert ask(client, "vhost", username="ghost", vhost=pipeline.name, ip="127.0.0.1") == "deny"
    registry.set_device_enabled(pipeline.db, "dev-1", False)
    assert ask(client, "vhost", username="dev-1", vhost=pipeline.name, ip="127.0.0.1") == "deny"


@pytest.mark.parametrize(
    ("resource", "name", "permission", "expected"),
    [
        ("exchange", "telemetry", "write", "allow"),
        ("exchange", "telemetry", "read", "deny"),
        ("exchange", "telemetry", "configure", "deny"),
        ("exchange", "tenants", "write", "deny"),
        ("exchange", "rejected", "write", "deny"),
        ("exchange", "amq.default", "write", "deny"),
        ("queue", "ingest", "read", "deny"),
        ("queue", "tenant.acme", "write", "deny"),
    ],
)
def test_a_device_may_only_write_to_telemetry(
    pipeline: Pipeline,
    client: FlaskClient,
    password: str,
    resource: str,
    name: str,
    permission: str,
    expected: str,
) -> None:
    form = {"username": "dev-1", "vhost": pipeline.name, "resource": resource, "name": name}
    assert ask(client, "resource", permission=permission, **form) == expected


@pytest.mark.parametrize(
    ("name", "routing_key", "expected"),
    [
        ("telemetry", "dev-1.env", "allow"),
        ("telemetry", "dev-1.power", "allow"),
        ("telemetry", "dev-2.env", "deny"),
        ("telemetry", "dev-1", "deny"),
        ("telemetry", "dev-1.env.extra", "deny"),
        ("telemetry", "dev-10.env", "deny"),
        ("telemetry", "#", "deny"),
        ("events", "dev-1.env", "deny"),
    ],
)
def test_a_device_publishes_only_as_itself(
    pipeline: Pipeline,
    client: FlaskClient,
    password: str,
    name: str,
    routing_key: str,
    expected: str,
) -> None:
    form = {"username": "dev-1", "vhost": pipeline.name, "resource": "topic", "name": name}
    assert ask(client, "topic", permission="write", routing_key=routing_key, **form) == expected


def test_only_the_broker_may_ask(pipeline: Pipeline, password: str) -> None:
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    outsider = app.test_client()
    outsider.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    response = outsider.post("/broker/user", data={"username": "dev-1", "password": password})
    assert response.status_code == 403
    assert "allow" not in response.get_data(as_text=True)
