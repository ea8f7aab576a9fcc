"""Hostile callers of the web app on the real database and broker (issue 10): reserved
ids, oversized bodies, non-finite job parameters, CSV formulas, unbounded rules, dicts
for ids, missing security headers, metrics on the public port."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fairway.amqp import management as rabbitmq_api
from fairway.devtools.processes import free_port
from fairway.domain.job_params import ExportParams
from fairway.storage import accounts, registry
from tasks import export
from tests.harness import ROOT, Pipeline, scrape
from tests.integration.test_tasks import START, insert_readings
from web import create_app

PASSWORD = "correct horse battery"


@pytest.fixture
def app(pipeline: Pipeline) -> Flask:
    """Tenant acme with a device, an operator and an admin."""
    pipeline.tenant("acme")
    pipeline.device("acme", "acme-1")
    accounts.create_user(pipeline.db, "ops", PASSWORD, accounts.OPERATOR)
    accounts.create_user(pipeline.db, "alice", PASSWORD, accounts.ADMIN, "acme")
    return create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})


def bearer(pipeline: Pipeline, user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + accounts.create_api_token(pipeline.db, user, 3600)}


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    body = response.get_json()
    assert response.status_code == status, body
    assert body["error"] == code and body["message"], body
    return body


def refusals(app: Flask, reason: str, tenant: str = "") -> float:
    """``fairway_web_refused_total{reason,tenant}`` in this process."""
    from web.metrics import REFUSED

    return REFUSED.labels(reason, tenant)._value.get()


# -- reserved ids ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["guest", "admin", "fairway", "fairway-web", "root", "fairway_x"])
def test_reserved_ids_cannot_be_devices_tenants_or_users(
    pipeline: Pipeline, app: Flask, name: str
) -> None:
    client = app.test_client()
    admin, ops = bearer(pipeline, "alice"), bearer(pipeline, "ops")
    before = refusals(app, "reserved_id", "acme")
    answer = client.post("/api/devices", json={"device": name}, headers=admin)
    assert name in refused(answer, 400, "reserved_id")["message"]
    assert refusals(app, "reserved_id", "acme") == before + 1
    refused(client.post("/api/tenants", json={"tenant": name}, headers=ops), 400, "reserved_id")
    user = {"user": name, "password": PASSWORD, "role": "viewer", "tenant": "acme"}
    refused(client.post("/api/users", json=user, headers=admin), 400, "reserved_id")
    assert registry.device_document(pipeline.db, name) is None
    assert registry.tenant_document(pipeline.db, name) is None
    assert accounts.user_document(pipeline.db, name) is None


def test_the_cli_refuses_a_reserved_device_id(pipeline: Pipeline, app: Flask) -> None:
    env = {**os.environ, **pipeline.settings.environ()}
    for device in ("fairway", "guest"):
        done = subprocess.run(
            [sys.executable, "-m", "fairway", "device", "register", "acme", device],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and "reserved" in done.stderr, done.stderr
    assert registry.device_document(pipeline.db, "fairway") is None


def test_disabling_a_legacy_device_named_like_a_service_account_closes_nothing(
    pipeline: Pipeline, app: Flask
) -> None:
    """A device stored as ``guest`` before ids were reserved (the pipeline's processes
    are ``guest``): disabling and rotating it must not cut the service connections."""
    pipeline.db["devices"].insert_one(
        {"_id": "guest", "tenant": "acme", "enabled": True, "password_hash": "x"}
    )
    client = app.test_client()
    ops = bearer(pipeline, "ops")
    with pipeline.channel() as channel:  # a service connection as guest on the vhost
        assert (
            client.post("/api/devices/guest/disable", headers=ops).get_json()["connections_closed"]
            == 0
        )
        assert (
            client.post("/api/devices/guest/rotate", headers=ops).get_json()["connections_closed"]
            == 0
        )
        assert channel.is_open
        channel.connection.process_data_events(0)
        assert channel.is_open
    with pytest.raises(ValueError, match="reserved"):
        rabbitmq_api.close_connections(pipeline.mgmt_url, pipeline.name, "guest", "test")


# -- request bodies ------------------------------------------------------------------------
@pytest.mark.settings(web_max_body_bytes=4096)
def test_an_oversized_body_is_refused_unread(app: Flask) -> None:
    client = app.test_client()
    big = {"user": "alice", "password": "x" * 5000}
    answer = client.post("/api/login", json=big)
    refused(answer, 413, "too_large")
    assert "4096" in answer.get_json()["message"]
    assert client.post("/login", data={"user": "a", "password": "x" * 5000}).status_code == 413
    ok = client.post("/api/login", json={"user": "alice", "password": PASSWORD})
    assert ok.status_code == 200


@pytest.mark.settings(web_max_body_bytes=4096)
def test_an_oversized_body_over_http_is_refused_as_json_and_counted(pipeline: Pipeline) -> None:
    """Through waitress, not Flask's test client: waitress refuses a body over its own
    limit before the app sees it, and used to answer in plain text, uncounted."""
    port = free_port()
    web = pipeline.start("web", web_port=port)

    def post(body: bytes, chunked: bool = False) -> tuple[int, str, bytes]:
        data: Any = (
            iter([body[i : i + 1000] for i in range(0, len(body), 1000)]) if chunked else body
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/login",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.headers["Content-Type"], answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    for body, chunked in ((b"x" * 5000, False), (b"x" * 4097, False), (b"x" * 9000, True)):
        status, kind, text = post(body, chunked)
        assert (status, kind) == (413, "application/json"), text
        answer = json.loads(text)
        assert answer["error"] == "too_large" and "4096 bytes" in answer["message"]
    status, _, text = post(b"x" * 4096)  # the limit itself is read (and is not JSON)
    assert status == 400 and json.loads(text)["error"] == "bad_request"
    samples = scrape(web.metrics_port)["fairway_web_refused_total"]
    assert samples['reason="too_large",tenant=""'] == 3


# -- job parameters -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"bucket": 1e999}, "bucket"),
        ({"bucket": -60}, "bucket"),
        ({"bucket": 0}, "bucket"),
        ({"bucket": 10**400}, "bucket"),
        ({"bucket": 10**12}, "bucket"),
        ({"bucket": 60.5}, "bucket"),
        ({"z": float("nan")}, "z"),
        ({"z": 1e999}, "z"),
        ({"z": -1}, "z"),
        ({"from": 1e999}, "from"),
        ({"from": 10**400}, "from"),
        ({"to": -5}, "to"),
        ({"to": float("nan")}, "to"),
    ],
)
def test_every_non_finite_or_out_of_range_job_number_is_a_400(
    pipeline: Pipeline, app: Flask, change: dict[str, Any], name: str
) -> None:
    client = app.test_client()
    report = {"from": START.timestamp(), "to": START.timestamp() + 3600, "bucket": 600, **change}
    # JSON as a browser or script would send it, including the non-standard NaN/Infinity.
    import json

    answer = client.post(
        "/api/reports",
        data=json.dumps(report),
        content_type="application/json",
        headers=bearer(pipeline, "alice"),
    )
    assert f"'{name}'" in refused(answer, 400, "bad_parameter")["message"]


# -- CSV exports -------------------------------------------------------------------------------
def test_csv_export_cells_cannot_run_as_formulas(pipeline: Pipeline, app: Flask) -> None:
    hostile = {
        "link": '=HYPERLINK("http://evil.example","x")',
        "plus": "+1+1",
        "minus": "-2+3",
        "at": "@SUM(A1)",
        "tab": "\t=1",
        "cr": "\r=1",
        "fine": "plain text",
        "n": -4.5,
        "flag": True,
    }
    insert_readings(pipeline.db, "acme", "acme-1", [START], [hostile])
    params = ExportParams("acme-1", START.timestamp(), START.timestamp() + 60)
    export.export_csv(pipeline.db, "job-csv", "acme", params, 1000, lambda done, total: None)
    with export.open_file(pipeline.db, "job-csv") as source:
        rows = list(csv.DictReader(io.StringIO(source.read().decode(), newline="")))
    values = {row["metric"]: row["value"] for row in rows}
    for key in ("link", "plus", "minus", "at", "tab", "cr"):
        assert values[key] == "'" + hostile[key], key
    assert values["fine"] == "plain text"
    assert values["n"] == "-4.5" and values["flag"] == "true"  # numbers stay numbers


# -- alert rules, ids as dicts -------------------------------------------------------------------
@pytest.mark.settings(max_rules_per_tenant=3)
def test_alert_rules_per_tenant_are_bounded(pipeline: Pipeline, app: Flask) -> None:
    client = app.test_client()
    admin = bearer(pipeline, "alice")
    rule = {"metric": "temp", "op": ">", "threshold": 30}
    refused(
        client.post("/api/rules", json={**rule, "threshold": 10**400}, headers=admin),
        400,
        "bad_parameter",
    )
    for _ in range(3):
        assert client.post("/api/rules", json=rule, headers=admin).status_code == 201
    before = refusals(app, "too_many_rules", "acme")
    refused(client.post("/api/rules", json=rule, headers=admin), 409, "too_many_rules")
    assert refusals(app, "too_many_rules", "acme") == before + 1
    assert len(client.get("/api/rules", headers=admin).get_json()["rules"]) == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/rules", {"metric": "temp", "op": ">", "threshold": 1}),
        ("/api/devices", {"device": "d9"}),
        ("/api/users", {"user": "v9", "password": PASSWORD, "role": "viewer"}),
        ("/api/reports", {"from": 0, "to": 60, "bucket": 60}),
    ],
)
def test_a_tenant_that_is_not_a_string_is_a_400(
    pipeline: Pipeline, app: Flask, path: str, body: dict[str, Any]
) -> None:
    client = app.test_client()
    for tenant in ({"$ne": ""}, {"a": 1}, ["acme"], 7):
        answer = client.post(path, json={**body, "tenant": tenant}, headers=bearer(pipeline, "ops"))
        refused(answer, 400, "bad_parameter")
    assert pipeline.db["rules"].count_documents({}) == 0


# -- headers and metrics -----------------------------------------------------------------------
def test_every_answer_carries_security_headers(pipeline: Pipeline, app: Flask) -> None:
    client: FlaskClient = app.test_client()
    for path in ("/login", "/api/me", "/healthz", "/static/fairway.js", "/nowhere"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
    # No inline script is left for the policy to block.
    client.post("/api/login", json={"user": "alice", "password": PASSWORD})
    for page in (
        "/",
        "/devices/acme-1",
        "/alerts",
        "/rejections",
        "/reports",
        "/registry",
        "/users",
    ):
        html = client.get(page).get_data(as_text=True)
        assert "<script>" not in html and " style=" not in html, page


def test_metrics_are_served_on_the_metrics_port_only(pipeline: Pipeline) -> None:
    port = free_port()
    web = pipeline.start("web", web_port=port)
    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).close()
    with pytest.raises(urllib.error.HTTPError):  # 401: counted as a refusal
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/me", timeout=10)
    with pytest.raises(urllib.error.HTTPError) as public:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert public.value.code == 404
    samples = scrape(web.metrics_port)
    assert any('reason="login_required"' in k for k in samples["fairway_web_refused_total"])


# -- login throttling -----------------------------------------------------------------------
# Checks enough for the three free guesses at once: this is about the throttle, not the
# password-check slots (the default, half the cores, is 1 here: one would wait too long).
@pytest.mark.settings(login_max_failures=3, login_delay_max_s=4.0, login_concurrency=3)
def test_parallel_guesses_cannot_all_pass_the_throttle(pipeline: Pipeline, app: Flask) -> None:
    """Increment-then-check: of 12 guesses sent at once, only the 3 free ones are checked."""
    import threading

    statuses: list[int] = []
    start = threading.Barrier(12)

    def guess() -> None:
        client = app.test_client()
        start.wait()
        body = {"user": "alice", "password": "wrong password"}
        statuses.append(client.post("/api/login", json=body).status_code)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * 3 + [429] * 9


@pytest.mark.settings(login_max_failures=2, login_delay_max_s=2.0, login_window_s=1.0)
def test_login_delays_grow_are_capped_and_records_expire(pipeline: Pipeline, app: Flask) -> None:
    import time

    client = app.test_client()

    def attempt(password: str = "wrong password") -> Any:
        return client.post("/api/login", json={"user": "alice", "password": password})

    assert [attempt().status_code for _ in range(2)] == [401, 401]
    blocked = attempt(PASSWORD)  # after the free attempts: 1 s, even for the right one
    assert "retry in 1 s" in refused(blocked, 429, "too_many_attempts")["message"]
    time.sleep(1.1)
    assert attempt().status_code == 401  # the third attempt: the next waits 2 s
    assert "retry in 2 s" in attempt().get_json()["message"]
    time.sleep(2.1)
    assert attempt().status_code == 401  # capped at 2 s, not 4 s: a lockout never lasts
    assert "retry in 2 s" in attempt().get_json()["message"]
    record = pipeline.db[accounts.LOGIN_FAILURES].find_one({"_id": "user:alice"})
    assert record["expires"] > record["until"]  # forgotten after the window: no forever
    time.sleep(3.1)  # past the delay and the window: the record has expired
    assert attempt(PASSWORD).status_code == 200
    assert pipeline.db[accounts.LOGIN_FAILURES].find_one({"_id": "user:alice"}) is None


@pytest.mark.settings(login_addr_rate=0.01, login_addr_burst=3, login_max_failures=100)
def test_login_attempts_per_address_are_refused_from_memory_beyond_the_burst(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()
    before = refusals(app, "login_rate")

    def attempt(address: str, forwarded: str | None = None) -> Any:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        body = {"user": f"nobody-{os.urandom(4).hex()}", "password": "wrong"}
        environ = {"REMOTE_ADDR": address}
        return client.post("/api/login", json=body, headers=headers, environ_base=environ)

    assert [attempt("10.9.0.1").status_code for _ in range(3)] == [401] * 3
    over = attempt("10.9.0.1", forwarded="10.9.9.9")  # no trusted proxy: the header is ignored
    assert "from this address" in refused(over, 429, "login_rate")["message"]
    assert 1 <= int(over.headers["Retry-After"]) <= 100
    # Refused before the throttle records: the address's record counts only the three.
    record = pipeline.db[accounts.LOGIN_FAILURES].find_one({"_id": "addr:10.9.0.1"})
    assert record is not None and record["n"] == 3, record
    assert attempt("10.9.0.2").status_code == 401  # another address has its own bucket
    assert refusals(app, "login_rate") == before + 1


@pytest.mark.settings(
    login_addr_rate=0.01, login_addr_burst=2, login_max_failures=100, proxy_hops=1
)
def test_behind_a_trusted_proxy_the_forwarded_client_is_the_address(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()

    def attempt(forwarded: str) -> int:
        body = {"user": "nobody", "password": "wrong"}
        return client.post(
            "/api/login",
            json=body,
            headers={"X-Forwarded-For": forwarded},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},  # the proxy
        ).status_code

    assert [attempt("198.51.100.1") for _ in range(3)] == [401, 401, 429]
    assert attempt("198.51.100.2") == 401  # another client behind the same proxy


@pytest.mark.settings(login_user_rate=0.01, login_user_burst=2, login_max_failures=100)
def test_successful_logins_per_user_are_bounded_and_strangers_cannot_spend_them(
    pipeline: Pipeline, app: Flask
) -> None:
    from web.auth import LOGINS

    client = app.test_client()
    body = {"user": "alice", "password": PASSWORD}
    wrong = {"user": "alice", "password": "wrong password"}
    # A stranger's wrong passwords (from many addresses) spend none of alice's logins.
    for i in range(4):
        answer = client.post("/api/login", json=wrong, environ_base={"REMOTE_ADDR": f"10.8.0.{i}"})
        assert answer.status_code == 401

    def fresh_login(user: dict[str, str]) -> Any:  # a new client each time: a new session
        return app.test_client().post("/api/login", json=user)

    assert [fresh_login(body).status_code for _ in range(2)] == [200, 200]
    checked = LOGINS.labels("ok")._value.get() + LOGINS.labels("failed")._value.get()
    over = fresh_login(body)
    assert "logins of this user" in refused(over, 429, "login_rate")["message"]
    assert int(over.headers["Retry-After"]) >= 1
    # Refused before the password check: neither a success nor a failure was counted.
    assert LOGINS.labels("ok")._value.get() + LOGINS.labels("failed")._value.get() == checked
    assert fresh_login({"user": "ops", "password": PASSWORD}).status_code == 200


@pytest.mark.settings(login_concurrency=1, login_wait_s=0.2, login_max_failures=5)
def test_password_checks_are_bounded_and_the_excess_is_refused_503(
    pipeline: Pipeline, app: Flask
) -> None:
    from web.auth import LOGIN_SLOTS, LoginSlots

    client = app.test_client()
    slots: LoginSlots = app.extensions[LOGIN_SLOTS]
    before = refusals(app, "login_busy")
    # One check running (held here) and one waiting: no place left, refused at once.
    assert slots.acquire() and slots._places.acquire(blocking=False)
    body = {"user": "alice", "password": PASSWORD}
    busy = client.post("/api/login", json=body)
    refused(busy, 503, "login_busy")
    assert busy.headers["Retry-After"] == "1"
    slots._places.release()
    # A place to wait, but the slot stays taken past FAIRWAY_LOGIN_WAIT_S: refused too.
    refused(client.post("/api/login", json=body), 503, "login_busy")
    assert refusals(app, "login_busy") == before + 2
    slots.release()
    # Refusals for want of a slot did not use up alice's (or the address's) free attempts.
    wrong = {"user": "alice", "password": "wrong password"}
    assert [client.post("/api/login", json=wrong).status_code for _ in range(5)] == [401] * 5
    assert client.post("/api/login", json=body).status_code == 429  # the sixth: throttled
