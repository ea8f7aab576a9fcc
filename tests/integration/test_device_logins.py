"""Device logins cost what the secret warrants (issue 10): a keyed hash compared in
constant time, the same work for unknown ids, refusals and records cached, reserved
names refused, legacy argon2 hashes migrated, and /broker/* on its own thread pool."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from fairway.devtools.processes import free_port
from fairway.kernel.settings import Settings
from fairway.storage import accounts, registry
from tests.harness import Pipeline, reading
from tests.integration.conftest import pipeline_on_own_broker
from web import broker_auth, create_app

DECISIONS = "fairway_broker_auth_decisions_total"


@pytest.fixture
def app(pipeline: Pipeline) -> Flask:
    pipeline.tenant("acme")
    return create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})


@pytest.fixture
def key(pipeline: Pipeline) -> bytes:
    found = broker_auth.hash_key(pipeline.settings)
    assert found is not None
    return found


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every argon2 verify or hash made while the test runs."""
    calls: list[str] = []
    verify, hash_ = PasswordHasher.verify, PasswordHasher.hash

    def counted_verify(self: PasswordHasher, *args: Any, **kwargs: Any) -> Any:
        calls.append("verify")
        return verify(self, *args, **kwargs)

    def counted_hash(self: PasswordHasher, *args: Any, **kwargs: Any) -> Any:
        calls.append("hash")
        return hash_(self, *args, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", counted_verify)
    monkeypatch.setattr(PasswordHasher, "hash", counted_hash)
    yield calls


def login(client: FlaskClient, user: str, password: str) -> str:
    answer = client.post("/broker/user", data={"username": user, "password": password})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def refused(reason: str, tenant: str = "") -> float:
    return broker_auth.LOGIN_REFUSED.labels(reason, tenant)._value.get()


def test_device_passwords_are_keyed_hashes_and_wrong_ones_cost_no_argon2(
    pipeline: Pipeline, app: Flask, key: bytes, argon2_calls: list[str]
) -> None:
    client = app.test_client()
    creds = registry.register_device(pipeline.db, "acme", "dev-1", key)
    stored = pipeline.db["devices"].find_one({"_id": "dev-1"})["password_hash"]
    assert stored.startswith("hmac-sha256$") and creds["password"] not in stored
    registry.register_device(pipeline.db, "acme", "dev-off", key)
    registry.set_device_enabled(pipeline.db, "dev-off", False)
    before = refused("bad_password", "acme")
    for n in range(200):  # a flood of guesses against a known, an unknown, a disabled id
        assert login(client, "dev-1", f"guess-{n}") == "deny"
        assert login(client, "ghost", f"guess-{n}") == "deny"
        assert login(client, "dev-off", creds["password"]) == "deny"
    assert login(client, "dev-1", creds["password"]) == "allow"
    assert argon2_calls == []
    assert refused("bad_password", "acme") == before + 200


def test_a_harness_device_is_stored_as_the_cli_stores_one_and_logs_in_without_argon2(
    pipeline: Pipeline, app: Flask, argon2_calls: list[str]
) -> None:
    """The benchmarks' devices (``Pipeline.device``) cost a login what a registered
    device costs in production: an argon2 hash would charge its first login ~190 ms of
    the web app's CPU to whatever the benchmark measures."""
    creds = pipeline.device("acme", "dev-h")
    stored = pipeline.db["devices"].find_one({"_id": "dev-h"})["password_hash"]
    assert stored.startswith(registry.KEYED_PREFIX)
    client = app.test_client()
    assert login(client, "dev-h", creds["password"]) == "allow"
    assert login(client, "dev-h", "wrong") == "deny"
    assert argon2_calls == []


def test_unknown_ids_do_the_same_work_as_known_ones(
    pipeline: Pipeline, app: Flask, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register_device(pipeline.db, "acme", "dev-1", key)
    hashed: list[str] = []
    real = registry.keyed_hash

    def counted(k: bytes, device: str, password: str) -> str:
        hashed.append(device)
        return real(k, device, password)

    monkeypatch.setattr(registry, "keyed_hash", counted)
    client = app.test_client()
    assert login(client, "dev-1", "wrong") == "deny"
    assert login(client, "nobody", "wrong") == "deny"
    assert hashed == ["dev-1", "nobody"]  # one keyed hash each, and one comparison


def test_records_are_cached_and_forgotten_when_the_device_changes(
    pipeline: Pipeline, app: Flask, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = registry.register_device(pipeline.db, "acme", "dev-1", key)
    accounts.create_user(pipeline.db, "ops", "correct horse battery", accounts.OPERATOR)
    ops = {"Authorization": "Bearer " + accounts.create_api_token(pipeline.db, "ops", 3600)}
    reads: list[str] = []
    real = registry.device_credential

    def counted(db: Any, device: str) -> registry.Credential:
        reads.append(device)
        return real(db, device)

    monkeypatch.setattr(registry, "device_credential", counted)
    client = app.test_client()
    for n in range(50):
        assert login(client, "dev-1", f"wrong-{n}") == "deny"
        assert login(client, "ghost", "wrong") == "deny"
    assert login(client, "dev-1", creds["password"]) == "allow"
    assert reads == ["dev-1", "ghost"]  # one read each within the TTL
    assert client.post("/api/devices/dev-1/disable", headers=ops).status_code == 200
    assert login(client, "dev-1", creds["password"]) == "deny"  # at once, not after the TTL
    assert client.post("/api/devices/dev-1/enable", headers=ops).status_code == 200
    assert login(client, "dev-1", creds["password"]) == "allow"
    rotated = client.post("/api/devices/dev-1/rotate", headers=ops).get_json()["password"]
    assert login(client, "dev-1", creds["password"]) == "deny"
    assert login(client, "dev-1", rotated) == "allow"


def test_legacy_argon2_hashes_keep_working_and_migrate_on_login(
    pipeline: Pipeline, app: Flask, key: bytes, argon2_calls: list[str]
) -> None:
    creds = registry.register_device(pipeline.db, "acme", "old-1")  # no key: argon2
    assert pipeline.db["devices"].find_one({"_id": "old-1"})["password_hash"].startswith("$argon2")
    client = app.test_client()
    assert login(client, "old-1", "wrong") == "deny"
    assert login(client, "old-1", "wrong") == "deny"  # the same refusal, from the cache
    assert argon2_calls.count("verify") == 1
    assert login(client, "old-1", creds["password"]) == "allow"
    stored = pipeline.db["devices"].find_one({"_id": "old-1"})["password_hash"]
    assert stored == registry.keyed_hash(key, "old-1", creds["password"])
    argon2_calls.clear()
    assert login(client, "old-1", "another guess") == "deny"
    assert login(client, "old-1", creds["password"]) == "allow"
    assert argon2_calls == []


@pytest.mark.parametrize("name", ["guest", "fairway", "fairway-web", "admin", "root"])
def test_reserved_names_are_refused_without_a_lookup(
    pipeline: Pipeline, app: Flask, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even one stored as a device before ids were reserved.
    pipeline.db["devices"].insert_one(
        {"_id": name, "tenant": "acme", "enabled": True, "password_hash": "x"}
    )
    monkeypatch.setattr(registry, "device_credential", lambda *_: pytest.fail("looked up"))
    before = refused("reserved_id")
    assert login(app.test_client(), name, "guest") == "deny"
    assert refused("reserved_id") == before + 1


def _post(port: int, path: str, form: dict[str, str]) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data, 10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_broker_auth_has_its_own_port_and_pool(pipeline: Pipeline, app: Flask, key: bytes) -> None:
    """The rule: with a broker-auth port (the default, 8082), /broker/* is answered there
    by its own threads; the web port still answers it (a broker not yet reconfigured in an
    upgrade keeps working) but logs a warning once a minute and counts each call."""
    creds = registry.register_device(pipeline.db, "acme", "dev-1", key)
    web_port, auth_port = free_port(), free_port()
    web = pipeline.start("web", web_port=web_port, broker_auth_port=auth_port)
    form = {"username": "dev-1", "password": creds["password"]}
    assert _post(auth_port, "/broker/user", form) == (200, "allow")
    assert web.metric("fairway_web_broker_auth_on_web_port_total") == 0
    assert _post(web_port, "/broker/user", form) == (200, "allow")
    assert _post(web_port, "/broker/vhost", {"username": "dev-1"})[0] == 200
    assert web.metric("fairway_web_broker_auth_on_web_port_total") == 2
    assert _post(auth_port, "/api/login", {"user": "x"})[0] == 404  # nothing else on it
    assert _post(web_port, "/api/login", {"user": "x"})[0] != 404  # the UI is still there
    log = web.log_path.read_text()
    assert f"device logins belong on FAIRWAY_BROKER_AUTH_PORT={auth_port}" in log
    assert log.count("broker auth request on the web port") == 1  # once a minute


def test_broker_auth_port_0_serves_the_broker_on_the_web_port(
    pipeline: Pipeline, app: Flask, key: bytes
) -> None:
    creds = registry.register_device(pipeline.db, "acme", "dev-1", key)
    web_port = free_port()
    pipeline.start("web", web_port=web_port, broker_auth_port=0)
    form = {"username": "dev-1", "password": creds["password"]}
    assert _post(web_port, "/broker/user", form) == (200, "allow")


def test_the_broker_asks_the_auth_port_scripts_services_sh_derives(
    base_settings: Settings, tmp_path: Path
) -> None:
    """A node set up by scripts/services.sh with only FAIRWAY_BROKER_AUTH_PORT (as the
    shared one is, with its default) sends device logins to that port's pool: a device
    logs in over AMQP and only the auth server answered the broker."""
    with pipeline_on_own_broker(base_settings, tmp_path) as (pipeline, _node):
        pipeline.tenant("acme")
        creds = pipeline.device("acme", "dev-1")
        web = pipeline.start("web")
        pipeline.publish(
            [("dev-1.env", reading(), {"message_id": "a", "user_id": "dev-1"})],
            creds["username"],
            creds["password"],
        )
        allowed = web.metric(DECISIONS, check="user", decision="allow")
        assert allowed >= 1
        # The web port's threads never saw a broker call.
        assert web.metric("fairway_web_broker_auth_on_web_port_total") == 0
        assert "broker auth request on the web port" not in web.log_path.read_text()
