"""The management pages as served (Flask test client, real database): who gets them,
what they carry to the browser, and that viewers get no control. The browser flows are
in test_browser.py."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from fairway.storage import accounts
from tests.harness import Pipeline
from web import create_app

PASSWORD = "manage pages password"


@pytest.fixture
def clients(pipeline: Pipeline) -> dict[str, FlaskClient]:
    """A logged-in session per role (operator, admin and viewer of acme), and a stranger."""
    pipeline.tenant("acme")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    out = {"anon": app.test_client()}
    for user, role, tenant in (
        ("op", accounts.OPERATOR, None),
        ("ada", accounts.ADMIN, "acme"),
        ("vic", accounts.VIEWER, "acme"),
    ):
        accounts.create_user(pipeline.db, user, PASSWORD, role, tenant)
        client = app.test_client()
        answer = client.post("/api/login", json={"user": user, "password": PASSWORD})
        assert answer.status_code == 200, answer.get_json()
        out[role] = client
    return out


def page_arg(text: str) -> dict[str, Any]:
    found = re.search(r"data-page-arg='([^']*)'", text)
    assert found, "no data-page-arg"
    return json.loads(html.unescape(found.group(1)))


def test_admins_and_operators_get_the_registry_with_where_devices_connect(
    pipeline: Pipeline, clients: dict[str, FlaskClient]
) -> None:
    for role in ("admin", "operator"):
        answer = clients[role].get("/registry")
        assert answer.status_code == 200
        text = answer.get_data(as_text=True)
        assert 'id="register"' in text and 'data-page="registryPage"' in text
        assert ('id="register-tenant"' in text) == (role == "operator")
        arg = page_arg(text)
        assert arg["role"] == role
        assert arg["access"]["amqp"] == {
            "tls": False,
            "host": "127.0.0.1",
            "port": 5672,
            "vhost": pipeline.name,
        }
        assert arg["access"]["mqtt"] == {"tls": False, "host": "127.0.0.1", "port": 1883}
        assert "guest:guest" not in text  # the services' own credentials never reach a page
        nav = clients[role].get("/").get_data(as_text=True)
        assert 'href="/registry"' in nav and 'href="/users"' in nav
        users = clients[role].get("/users")
        assert users.status_code == 200
        assert page_arg(users.get_data(as_text=True))["role"] == role


def test_viewers_get_no_management_page_nor_link(clients: dict[str, FlaskClient]) -> None:
    viewer = clients["viewer"]
    for path in ("/registry", "/users"):
        answer = viewer.get(path)
        assert answer.status_code == 403
        text = answer.get_data(as_text=True)
        assert 'id="forbidden"' in text
        assert "<form id=" not in text and '<button type="button"' not in text
        assert "manage-page.js" not in text
    nav = viewer.get("/").get_data(as_text=True)
    assert 'href="/registry"' not in nav and 'href="/users"' not in nav
    # and the API behind the pages refuses them too
    csrf = viewer.get("/api/me").get_json()["csrf_token"]
    refused = viewer.post("/api/devices", json={"device": "x1"}, headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403


def test_strangers_are_sent_to_log_in(clients: dict[str, FlaskClient]) -> None:
    for path in ("/registry", "/users"):
        answer = clients["anon"].get(path)
        assert answer.status_code == 302 and "/login" in answer.headers["Location"]
