"""``/api/push-token`` on the real database and broker: minting is throttled per user and
reuses the web app's one broker connection instead of opening one per call."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from fairway.domain import pushtoken
from fairway.storage import accounts
from tests.harness import Pipeline, management, wait_for
from web import create_app
from web.broker import EXTENSION, Broker

PASSWORD = "correct horse battery"


def _app(pipeline: Pipeline) -> Flask:
    pipeline.tenant("a")
    pipeline.tenant("b")
    return create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})


def _client(pipeline: Pipeline, app: Flask, user: str, role: str, tenant: str | None) -> Any:
    accounts.create_user(pipeline.db, user, PASSWORD, role, tenant)
    token = accounts.create_api_token(pipeline.db, user, 3600)
    client: FlaskClient = app.test_client()
    return lambda method, path: client.open(
        path, method=method, headers={"Authorization": f"Bearer {token}"}
    )


def _refused(tenant: str) -> float:
    sample = REGISTRY.get_sample_value(
        "fairway_web_refused_total", {"tenant": tenant, "reason": "push_token_rate"}
    )
    return sample or 0.0


def _web_connections(pipeline: Pipeline) -> list[str]:
    vhost = urllib.parse.quote(pipeline.name, safe="")
    return [
        c["name"]
        for c in management("GET", f"vhosts/{vhost}/connections")
        if c.get("client_properties", {}).get("connection_name") == "fairway-web"
    ]


@pytest.mark.settings(push_token_rate=0.01, push_token_burst=3)
def test_minting_is_throttled_per_user(pipeline: Pipeline) -> None:
    app = _app(pipeline)
    noisy = _client(pipeline, app, "noisy", accounts.VIEWER, "a")
    quiet = _client(pipeline, app, "quiet", accounts.VIEWER, "a")
    before = _refused("a")
    for _ in range(3):
        assert noisy("GET", "/api/push-token").status_code == 200
    refused = noisy("GET", "/api/push-token")
    assert refused.status_code == 429
    assert refused.get_json()["error"] == "push_token_rate"
    assert "retry in" in refused.get_json()["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert _refused("a") == before + 1
    # Another user of the same tenant is not affected.
    answer = quiet("GET", "/api/push-token")
    assert answer.status_code == 200
    claims = pushtoken.verify(pipeline.settings.secret_key, answer.get_json()["token"], 60)
    assert claims["user"] == "quiet"


@pytest.mark.settings(push_token_burst=100)
def test_minting_reuses_one_broker_connection(pipeline: Pipeline) -> None:
    app = _app(pipeline)
    broker: Broker = app.extensions[EXTENSION]
    users = [_client(pipeline, app, f"v{i}", accounts.VIEWER, "a") for i in range(3)]
    users.append(_client(pipeline, app, "adm", accounts.ADMIN, "b"))
    try:
        tokens = set()
        for _ in range(10):
            for api in users:
                answer = api("GET", "/api/push-token")
                assert answer.status_code == 200, answer.get_json()
                tokens.add(answer.get_json()["token"])
        assert len(tokens) == 40  # every token is different (single-use ids)
        # Forty tokens, and four user exchanges created on the way: one connection.
        assert broker.opened == 1
        wait_for(lambda: len(_web_connections(pipeline)) == 1, 30, "the web connection listed")

        # The broker drops it (as in a broker restart): the next call re-opens it, once.
        for name in _web_connections(pipeline):
            management("DELETE", "connections/" + urllib.parse.quote(name, safe=""))
        wait_for(lambda: not _web_connections(pipeline), 30, "the connection to be closed")
        for api in users:
            assert api("GET", "/api/push-token").status_code == 200
        assert broker.opened == 2
    finally:
        broker.close()
