"""The JSON API on the real database and broker: the authorisation matrix, sessions,
CSRF, tokens, throttling, history paging and clear errors."""

from __future__ import annotations

import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from fairway.domain import notify, pushtoken
from fairway.kernel.contract import hour_key
from fairway.storage import accounts, device_state, mongo, registry
from tests.harness import Pipeline, management
from web import broker_auth, create_app

PASSWORD = "correct horse battery"


class Api:
    """A test client that authenticates every request with one user's API token."""

    def __init__(self, client: FlaskClient, token: str | None) -> None:
        self.client, self.token = client, token

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self.client.open(path, method=method, json=body, headers=headers)


@pytest.fixture
def world(pipeline: Pipeline) -> dict[str, Any]:
    """Tenants a and b, a device in each, an operator, admins and a viewer."""
    pipeline.tenant("a")
    pipeline.tenant("b")
    pipeline.device("a", "a1")
    pipeline.device("b", "b1")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    db = pipeline.db
    users = {"op": (accounts.OPERATOR, None), "adm_a": (accounts.ADMIN, "a")}
    users |= {"view_a": (accounts.VIEWER, "a"), "adm_b": (accounts.ADMIN, "b")}
    apis: dict[str, Api] = {"anon": Api(app.test_client(), None)}
    for name, (role, tenant) in users.items():
        accounts.create_user(db, name, PASSWORD, role, tenant)
        apis[name] = Api(app.test_client(), accounts.create_api_token(db, name, 3600))
    return {"app": app, "db": db, "api": apis}


# (method, path, body, expected status per caller). Another tenant's objects answer
# 404 exactly like missing ones; a role that may not act at all answers 403.
MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/api/tenants", None, {"op": 200, "adm_a": 200, "view_a": 200, "anon": 401}),
    ("GET", "/api/tenants/b", None, {"op": 200, "adm_a": 404, "view_a": 404, "anon": 401}),
    ("PATCH", "/api/tenants/b", {"weight": 2}, {"op": 200, "adm_b": 403, "view_a": 403}),
    ("POST", "/api/tenants", {"tenant": "c"}, {"op": 201, "adm_a": 403, "view_a": 403}),
    ("GET", "/api/devices", None, {"op": 200, "adm_a": 200, "view_a": 200, "anon": 401}),
    ("GET", "/api/devices?tenant=b", None, {"op": 200, "adm_a": 404, "view_a": 404}),
    ("GET", "/api/devices/b1", None, {"op": 200, "adm_b": 200, "adm_a": 404, "view_a": 404}),
    ("GET", "/api/devices/a1", None, {"op": 200, "adm_a": 200, "view_a": 200, "adm_b": 404}),
    ("POST", "/api/devices", {"device": "a2"}, {"adm_a": 201, "view_a": 403, "anon": 401}),
    ("POST", "/api/devices", {"device": "x9", "tenant": "b"}, {"adm_a": 404, "op": 201}),
    ("POST", "/api/devices/b1/disable", None, {"adm_a": 404, "view_a": 403, "adm_b": 200}),
    ("POST", "/api/devices/a1/rotate", None, {"adm_b": 404, "view_a": 403, "adm_a": 200}),
    ("GET", "/api/devices/b1/telemetry", None, {"op": 200, "adm_a": 404, "view_a": 404}),
    ("GET", "/api/devices/a1/telemetry", None, {"view_a": 200, "adm_b": 404, "anon": 401}),
    ("GET", "/api/users", None, {"op": 200, "adm_a": 200, "view_a": 403, "anon": 401}),
    ("GET", "/api/users?tenant=b", None, {"op": 200, "adm_a": 404}),
    (
        "POST",
        "/api/users",
        {"user": "v2", "password": PASSWORD, "role": "viewer", "tenant": "b"},
        {"adm_a": 404, "view_a": 403, "adm_b": 201},
    ),
    (
        "POST",
        "/api/users",
        {"user": "op2", "password": PASSWORD, "role": "operator"},
        {"adm_a": 403, "op": 201},
    ),
    ("PATCH", "/api/users/adm_b", {"enabled": False}, {"adm_a": 404, "view_a": 403}),
    ("PATCH", "/api/users/op", {"role": "viewer"}, {"adm_a": 404, "adm_b": 404}),
    ("PUT", "/api/subscriptions/b1", None, {"view_a": 404, "adm_a": 404, "anon": 401}),
    ("PUT", "/api/subscriptions/a1", None, {"view_a": 200, "adm_b": 404}),
    ("GET", "/api/me", None, {"op": 200, "view_a": 200, "anon": 401}),
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX)
def test_authorisation_matrix(
    world: dict[str, Any], method: str, path: str, body: Any, expected: dict[str, int]
) -> None:
    # Refusals first, so an allowed change cannot hide a refusal that came after it.
    for caller, status in sorted(expected.items(), key=lambda item: item[1] < 300):
        response = world["api"][caller](method, path, body)
        assert response.status_code == status, (caller, response.get_json())
        if status >= 400:
            error = response.get_json()
            assert set(error) == {"error", "message"} and error["message"], error


def test_lists_are_scoped_to_the_callers_tenant(world: dict[str, Any]) -> None:
    api = world["api"]
    assert [d["device"] for d in api["view_a"]("GET", "/api/devices").get_json()["devices"]] == [
        "a1"
    ]
    assert [t["tenant"] for t in api["adm_b"]("GET", "/api/tenants").get_json()["tenants"]] == ["b"]
    everything = api["op"]("GET", "/api/devices").get_json()["devices"]
    assert {d["device"] for d in everything} == {"a1", "b1"}
    users = api["adm_a"]("GET", "/api/users").get_json()["users"]
    assert {u["user"] for u in users} == {"adm_a", "view_a"}


def test_passwords_are_hashed_and_credentials_shown_once(world: dict[str, Any]) -> None:
    doc = world["db"][accounts.USERS].find_one({"_id": "adm_a"})
    assert doc["password_hash"].startswith("$argon2id$") and PASSWORD not in str(doc)
    created = world["api"]["adm_a"]("POST", "/api/devices", {"device": "a3"}).get_json()
    assert len(created["password"]) >= 24
    assert "password" not in world["api"]["adm_a"]("GET", "/api/devices/a3").get_json()
    key = broker_auth.hash_key(world["app"].config["FAIRWAY_SETTINGS"])
    assert registry.verify_device_password(world["db"], "a3", created["password"], key)
    rotated = world["api"]["adm_a"]("POST", "/api/devices/a3/rotate").get_json()
    assert not registry.verify_device_password(world["db"], "a3", created["password"], key)
    assert registry.verify_device_password(world["db"], "a3", rotated["password"], key)


def test_session_login_needs_csrf_for_changes(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    login = client.post("/api/login", json={"user": "adm_a", "password": PASSWORD})
    assert login.status_code == 200
    token = login.get_json()["csrf_token"]
    refused = client.post("/api/devices", json={"device": "a4"})
    assert refused.status_code == 400 and refused.get_json()["error"] == "csrf_failed"
    forged = client.post("/api/devices", json={"device": "a4"}, headers={"X-CSRF-Token": "x"})
    assert forged.status_code == 400
    ok = client.post("/api/devices", json={"device": "a4"}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 201
    assert client.post("/api/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert client.get("/api/me").status_code == 401


def test_tokens_expire_and_die_with_their_user(world: dict[str, Any]) -> None:
    db = world["db"]
    short = accounts.create_api_token(db, "view_a", 1.0)
    client = world["app"].test_client()
    me = {"Authorization": f"Bearer {short}"}
    assert client.get("/api/me", headers=me).status_code == 200
    time.sleep(1.2)  # past the token's 1 s lifetime
    expired = client.get("/api/me", headers=me)
    assert expired.status_code == 401 and expired.get_json()["error"] == "invalid_token"
    assert (
        world["api"]["adm_a"]("PATCH", "/api/users/view_a", {"enabled": False}).status_code == 200
    )
    assert world["api"]["view_a"]("GET", "/api/me").status_code == 401
    assert client.post("/api/login", json={"user": "view_a", "password": PASSWORD}).status_code == (
        401
    )


@pytest.mark.settings(login_max_failures=3, login_window_s=2.0)
def test_login_is_throttled(world: dict[str, Any]) -> None:
    client = world["app"].test_client()
    for _ in range(3):
        bad = client.post("/api/login", json={"user": "adm_a", "password": "wrong password"})
        assert bad.status_code == 401 and bad.get_json()["error"] == "bad_credentials"
    blocked = client.post("/api/login", json={"user": "adm_a", "password": PASSWORD})
    assert blocked.status_code == 429 and blocked.get_json()["error"] == "too_many_attempts"
    time.sleep(2.1)  # past the 2 s throttling window
    assert (
        client.post("/api/login", json={"user": "adm_a", "password": PASSWORD}).status_code == 200
    )


def test_history_pages_by_cursor_and_filters(world: dict[str, Any]) -> None:
    db = world["db"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    docs = [
        {
            "_id": f"a:a1:m{i:03d}",
            "hk": hour_key("a", "a1", start),
            "stream": "env" if i % 2 else "power",
            "ts": start + timedelta(seconds=i // 2),  # pairs share a timestamp
            "received": start,
            "values": {"v": i},
        }
        for i in range(25)
    ]
    for doc in docs[::3]:  # as stored before lean documents: read alike
        doc.update(tenant="a", device="a1", msg_id=doc["_id"].split(":")[2])
    db[mongo.TELEMETRY].insert_many(docs)
    device_state.apply(db, device_state.fold(docs))  # what the scheduler's sink maintains
    api = world["api"]["view_a"]
    seen: list[int] = []
    url = "/api/devices/a1/telemetry?limit=10"
    while url:
        page = api("GET", url).get_json()
        seen += [r["values"]["v"] for r in page["readings"]]
        # the message id of both document shapes (lean: from _id only)
        assert all(r["id"] == f"m{r['values']['v']:03d}" for r in page["readings"])
        cursor = page["next_cursor"]
        url = f"/api/devices/a1/telemetry?limit=10&cursor={cursor}" if cursor else ""
    assert sorted(seen) == list(range(25)) and len(seen) == 25
    assert seen == sorted(seen, key=lambda v: (v // 2, f"m{v:03d}"), reverse=True)
    window = api(
        "GET", "/api/devices/a1/telemetry?stream=env&from=2026-01-01T00:00:02Z&to=1767225605"
    )
    values = [r["values"]["v"] for r in window.get_json()["readings"]]
    assert values == [11, 9, 7, 5]
    bad_queries = ("limit=0", "limit=x", "from=yesterday", "from=1e20", "from=inf")
    for bad in (*bad_queries, "from=2026-02-01&to=2026-01-01"):
        response = api("GET", f"/api/devices/a1/telemetry?{bad}")
        assert response.status_code == 400 and response.get_json()["error"] == "bad_parameter"


def test_bad_bodies_get_clear_errors(world: dict[str, Any]) -> None:
    api = world["api"]["adm_a"]
    cases = [
        ("POST", "/api/devices", {"device": "Bad Id!"}, 400),
        ("POST", "/api/devices", {"device": "a1"}, 409),
        ("POST", "/api/devices", ["not", "an", "object"], 400),
        ("POST", "/api/users", {"user": "x1", "password": "short", "role": "viewer"}, 400),
        ("POST", "/api/users", {"user": "x2", "password": PASSWORD, "role": "king"}, 400),
        ("PATCH", "/api/users/view_a", {"enabled": "no"}, 400),
        ("GET", "/api/nothing-here", None, 404),
    ]
    for method, path, body, status in cases:
        response = api(method, path, body)
        assert response.status_code == status, (path, body, response.get_json())
        assert response.get_json()["message"]


def _bound_keys(pipeline: Pipeline, user_id: str) -> set[str] | None:
    """Routing keys binding ``events`` to ``user.<id>`` at the broker (None: no exchange)."""
    vhost = urllib.parse.quote(pipeline.name, safe="")
    names = {e["name"] for e in management("GET", f"exchanges/{vhost}")}
    if f"user.{user_id}" not in names:
        return None
    bindings = management("GET", f"exchanges/{vhost}/user.{user_id}/bindings/destination")
    return {b["routing_key"] for b in bindings if b["source"] == "events"}


def test_permissions_are_exchange_bindings(pipeline: Pipeline, world: dict[str, Any]) -> None:
    api = world["api"]
    created = {"user": "v9", "password": PASSWORD, "role": "viewer"}
    assert api["adm_a"]("POST", "/api/users", created).status_code == 201
    assert _bound_keys(pipeline, "v9") == {"job.a.v9"}
    token = accounts.create_api_token(world["db"], "v9", 60)
    v9 = Api(world["app"].test_client(), token)
    assert v9("PUT", "/api/subscriptions/a1").status_code == 200
    follows = {"telemetry.a.a1", "alert.a.a1", "status.a.a1"}
    assert _bound_keys(pipeline, "v9") == {"job.a.v9"} | follows
    assert v9("DELETE", "/api/subscriptions/a1").status_code == 200
    assert _bound_keys(pipeline, "v9") == {"job.a.v9"}
    assert api["adm_a"]("PATCH", "/api/users/v9", {"role": "admin"}).status_code == 200
    assert _bound_keys(pipeline, "v9") == {"job.a.v9", "telemetry.a.*", "alert.a.*", "status.a.*"}
    assert api["adm_a"]("PATCH", "/api/users/v9", {"enabled": False}).status_code == 200
    assert _bound_keys(pipeline, "v9") is None  # exchange gone: every session's feed stops


def test_a_sync_interrupted_by_a_crash_is_repaired(
    pipeline: Pipeline, world: dict[str, Any]
) -> None:
    """A recorded pending change (crash mid-sync) is completed by the next sync."""
    db = world["db"]
    # As if a sync crashed after recording the pending set, before touching the broker.
    db[accounts.USERS].update_one(
        {"_id": "view_a"},
        {"$set": {"subscriptions": ["a1"], "bindings_pending": ["telemetry.a.a1", "bogus.a.x"]}},
    )
    with pipeline.channel() as channel:  # and one stray binding really exists
        notify.declare_user(channel, "view_a")
        channel.exchange_bind("user.view_a", "events", "bogus.a.x")
    v = world["api"]["view_a"]
    assert v("PUT", "/api/subscriptions/a1").status_code == 200
    assert _bound_keys(pipeline, "view_a") == {
        "job.a.view_a",
        "telemetry.a.a1",
        "alert.a.a1",
        "status.a.a1",
    }


def test_push_token_recreates_a_users_exchange_after_a_broker_restart(
    pipeline: Pipeline, world: dict[str, Any]
) -> None:
    """User exchanges are transient: asking for a push token brings them back, bound."""
    api = world["api"]["view_a"]
    assert api("PUT", "/api/subscriptions/a1").status_code == 200
    expected = {"job.a.view_a", "telemetry.a.a1", "alert.a.a1", "status.a.a1"}
    assert _bound_keys(pipeline, "view_a") == expected
    with pipeline.channel() as channel:  # what a broker restart does to it
        channel.exchange_delete("user.view_a")
    assert _bound_keys(pipeline, "view_a") is None
    answer = api("GET", "/api/push-token").get_json()
    assert _bound_keys(pipeline, "view_a") == expected
    claims = pushtoken.verify(pipeline.settings.secret_key, answer["token"], 60)
    assert (claims["user"], claims["tenant"]) == ("view_a", "a")
    assert answer["url"] == f"http://127.0.0.1:{pipeline.settings.gateway_port}"


def test_api_tokens_are_minted_only_from_a_session(world: dict[str, Any]) -> None:
    """A leaked token must not be able to renew itself past its expiry."""
    refused = world["api"]["adm_a"]("POST", "/api/tokens", {})
    assert refused.status_code == 403 and refused.get_json()["error"] == "session_required"
    client = world["app"].test_client()
    csrf = client.post("/api/login", json={"user": "adm_a", "password": PASSWORD}).get_json()
    made = client.post(
        "/api/tokens", json={"ttl_s": 60}, headers={"X-CSRF-Token": csrf["csrf_token"]}
    )
    assert made.status_code == 201 and made.get_json()["token"].startswith("fwt_")


def test_login_page_never_redirects_off_site(world: dict[str, Any]) -> None:
    for target, landing in (("/devices/a1", "/devices/a1"), ("/\\evil.example", "/")):
        client = world["app"].test_client()
        page = client.get(f"/login?next={target}").get_data(as_text=True)
        csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
        form = {"csrf_token": csrf, "user": "adm_a", "password": PASSWORD, "next": target}
        answer = client.post("/login", data=form)
        assert answer.status_code == 302 and answer.headers["Location"] == landing


@pytest.mark.settings(proxy_hops=1, login_max_failures=2)
def test_behind_a_proxy_throttling_keys_on_the_client(
    pipeline: Pipeline, world: dict[str, Any]
) -> None:
    """With FAIRWAY_PROXY_HOPS=1 one client's failures do not lock out the others."""
    client = world["app"].test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.5"}

    def login(user: str, password: str, client_addr: str) -> int:
        headers = {"X-Forwarded-For": client_addr}
        body = {"user": user, "password": password}
        return client.post("/api/login", json=body, headers=headers, environ_base=proxy).status_code

    assert [login("op", "wrong password", "203.0.113.7") for _ in range(3)] == [401, 401, 429]
    assert login("adm_a", PASSWORD, "198.51.100.9") == 200  # another client, same proxy
    # The broker-auth allowlist checks the TCP peer, never a forwarded address.
    forged = client.post(
        "/broker/user",
        data={"username": "a1", "password": "x"},
        headers={"X-Forwarded-For": "127.0.0.1"},
        environ_base=proxy,
    )
    assert forged.status_code == 403
