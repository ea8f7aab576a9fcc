"""Device quarantine on the real broker: a device flooding refusals beyond its budget is
disconnected and its logins refused for a while; a tenant-mate is never held up.

The broker (scripts/services.sh) asks ``fairway web`` about device logins, so these tests
start the web app; they run on a RabbitMQ node of their own that asks it on a free port
(the module's ``pipeline`` fixture), so they need neither port 8080 nor its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
from flask.testing import FlaskClient
from pika.exceptions import AMQPConnectionError, ProbableAccessDeniedError

from benchmarks import isolation
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import accounts, quarantine
from ingest.metrics import QUARANTINE_MGMT_CALLS as SWEEP_CALLS
from ingest.quarantine import SWEEP_CALLS_BURST, SWEEP_CALLS_PER_S, SWEEP_MAX_DEVICES, Quarantiner
from tests.harness import Pipeline, reading, wait_for
from tests.integration.conftest import pipeline_on_own_broker
from web import create_app
from web.broker_auth import LOGIN_REFUSED

REFUSED_AT_LOGIN = (pika.exceptions.ProbableAuthenticationError, ProbableAccessDeniedError)
QUARANTINED = "fairway_devices_quarantined_total"
FLOOD_SETTINGS: dict[str, Any] = {
    "rejected_device_rate": 1.0,
    "rejected_device_burst": 20,
    "quarantine_refusals": 300,
    "quarantine_window_s": 60.0,
}


def _flood_until_closed(pipeline: Pipeline, creds: dict[str, str], limit_s: float) -> int:
    """Publish malformed messages as the device until the broker closes the connection;
    how many were sent. Fails if the connection is still open after ``limit_s``."""
    sent = 0
    deadline = time.monotonic() + limit_s
    stack = ExitStack()
    # A refused login (an AMQPConnectionError too) propagates; a close later counts, also
    # one between the login and the channel's opening (the relay's sweep closes a
    # reconnect admitted by the broker's auth cache within a quarter of a second).
    try:
        channel = stack.enter_context(pipeline.channel(creds["username"], creds["password"]))
    except REFUSED_AT_LOGIN:
        raise
    except AMQPConnectionError:
        return 0
    try:
        with stack:
            while time.monotonic() < deadline:
                for _ in range(100):
                    channel.basic_publish(topology.TELEMETRY, f"{creds['username']}.env", b"{no")
                    sent += 1
                channel.connection.process_data_events(time_limit=0)
    except AMQPConnectionError:
        return sent
    raise AssertionError(f"still connected after {limit_s} s and {sent} messages")


def _ask_login(client: FlaskClient, creds: dict[str, str]) -> str:
    answer = client.post(
        "/broker/user", data={"username": creds["username"], "password": creds["password"]}
    )
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def _quiet_device(pipeline: Pipeline, creds: dict[str, str], stop: threading.Event) -> list[Any]:
    """Publish a reading every 50 ms with confirms until ``stop``; returns errors seen."""
    errors: list[Any] = []

    def run() -> None:
        n = 0
        try:
            with pipeline.channel(creds["username"], creds["password"]) as channel:
                channel.confirm_delivery()
                while not stop.is_set():
                    channel.basic_publish(
                        topology.TELEMETRY,
                        f"{creds['username']}.env",
                        orjson.dumps(reading()),
                        pika.BasicProperties(message_id=f"calm-{n}"),
                    )
                    n += 1
                    time.sleep(0.05)
        except Exception as exc:  # reported by the test
            errors.append(exc)
        errors.append(n)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    errors.append(thread)
    return errors


@pytest.mark.settings(**FLOOD_SETTINGS, quarantine_s=300.0)
def test_a_flooding_device_is_quarantined_and_its_tenant_mate_keeps_storing(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("acme")
    flood = pipeline.device("acme", "flood-1")
    calm = pipeline.device("acme", "calm-1")
    pipeline.start("web")
    pipeline.start("relay")
    pipeline.start("scheduler")
    client = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True}).test_client()
    # A legitimate device with a few bad readings, beyond its refusal budget even: never.
    pipeline.publish([("calm-1.env", b"{bad", {}) for _ in range(60)], **_login(calm))
    stop = threading.Event()
    quiet = _quiet_device(pipeline, calm, stop)
    started = time.monotonic()
    sent = _flood_until_closed(pipeline, flood, 30)
    closed_after = time.monotonic() - started
    record = quarantine.active(pipeline.db, "flood-1", time.time())
    assert record is not None and record.tenant == "acme" and record.offences == 1
    assert 290 < record.until - record.since <= 300
    assert pipeline.metric("relay", QUARANTINED, tenant="acme") == 1
    # The sweep's pass may cut the connection before the worker's close returns.
    wait_for(
        lambda: pipeline.metric("relay", "fairway_relay_quarantine_closes_total", outcome="closed"),
        10,
        "the worker's close counted",
    )
    refused_before = LOGIN_REFUSED.labels(quarantine.REASON, "acme")._value.get()
    assert _ask_login(client, flood) == "deny"
    assert LOGIN_REFUSED.labels(quarantine.REASON, "acme")._value.get() == refused_before + 1
    assert _ask_login(client, calm) == "allow"
    assert quarantine.get(pipeline.db, "calm-1") is None
    # RabbitMQ's auth cache (60 s) may still admit the flooder's reconnect: the relay then
    # closes it again on its next refusals; once the cache expired, the login is refused.
    refused_at_door = False
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline and not refused_at_door:
        try:
            _flood_until_closed(pipeline, flood, 30)
        except REFUSED_AT_LOGIN:
            refused_at_door = True
        else:
            time.sleep(2)
    assert refused_at_door
    assert pipeline.metric("relay", QUARANTINED, tenant="acme") == 1  # one quarantine
    stop.set()
    thread = quiet[0]
    stopped = time.monotonic()
    thread.join(120)
    rest = quiet[1:]
    print(
        f"flood: {sent} messages, closed after {closed_after:.1f} s; quiet thread ended"
        f" {time.monotonic() - stopped:.1f} s after stop: {rest}"
    )
    assert len(rest) == 1, rest  # no error: only the count of readings published
    # Its readings share `ingest.acme` with what the flooder queued before it was cut off,
    # which drains at the refusal pace: stored, later.
    pipeline.wait_stored(rest[0], timeout=180, device="calm-1")
    print(f"quiet stored {time.monotonic() - stopped:.1f} s after stop")

    # The tenant's admin sees it on the device and lifts it.
    accounts.create_user(pipeline.db, "boss", "boss password 123", accounts.ADMIN, "acme")
    token = accounts.create_api_token(pipeline.db, "boss", 60)
    auth = {"Authorization": f"Bearer {token}"}
    shown = client.get("/api/devices/flood-1", headers=auth).get_json()["quarantine"]
    assert shown["active"] is True and shown["offences"] == 1
    assert shown["reason"] == quarantine.REASON
    listed = client.get("/api/devices", headers=auth).get_json()["devices"]
    assert {d["device"]: d["quarantine"] is not None for d in listed} == {
        "flood-1": True,
        "calm-1": False,
    }
    lifted = client.post("/api/devices/flood-1/lift-quarantine", headers=auth)
    assert lifted.status_code == 200 and lifted.get_json()["quarantine"]["active"] is False
    assert _ask_login(client, flood) == "allow"
    assert pipeline.alive("relay") and pipeline.alive("scheduler") and pipeline.alive("web")


@pytest.mark.settings(**FLOOD_SETTINGS, quarantine_s=4.0, quarantine_max_s=3600.0)
def test_a_quarantine_expires_and_a_repeat_offence_lasts_longer(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    flood = pipeline.device("acme", "flood-2")
    pipeline.start("web")
    pipeline.start("relay")
    pipeline.start("scheduler")
    client = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True}).test_client()
    _flood_until_closed(pipeline, flood, 30)
    first = quarantine.get(pipeline.db, "flood-2")
    assert first is not None and first.offences == 1
    assert _ask_login(client, flood) == "deny"
    wait_for(lambda: _ask_login(client, flood) == "allow", 10, "expiry lifts it")
    assert time.time() >= first.until
    # Flooding again (the broker's cache admits the login: it was allowed a moment ago).
    try:
        _flood_until_closed(pipeline, flood, 30)
    except REFUSED_AT_LOGIN:
        pytest.fail("the broker refused a login the auth backend allows")
    second = quarantine.get(pipeline.db, "flood-2")
    assert second is not None and second.offences == 2
    assert second.until - second.since == pytest.approx(8.0)
    assert pipeline.metric("relay", QUARANTINED, tenant="acme") == 2


def _login(creds: dict[str, str]) -> dict[str, str]:
    return {"username": creds["username"], "password": creds["password"]}


@pytest.fixture
def pipeline(
    base_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    """This module's pipelines run on a RabbitMQ node of their own (the shared
    configuration, its 60 s auth cache included) whose HTTP auth backend is the pipeline's
    web app on a free port: device logins need neither port 8080 nor its lock. Settings
    from ``@pytest.mark.settings(...)``, as the shared fixture's."""
    marker = request.node.get_closest_marker("settings")
    with pipeline_on_own_broker(base_settings, tmp_path, **(marker.kwargs if marker else {})) as (
        pipeline,
        _node,
    ):
        yield pipeline


@pytest.mark.settings(**FLOOD_SETTINGS, quarantine_s=300.0)
def test_the_isolation_attacker_reconnecting_every_half_second_is_refused_at_login(
    pipeline: Pipeline,
) -> None:
    """``benchmarks.isolation``'s attacker, reconnecting every 0.5 s, is refused at login
    once RabbitMQ's auth cache entry from its first login expired (60 s, not renewed by
    the cached logins), and no login is admitted after the first refusal.

    Before, a connection the relay's sweep closed between its login and its channel's
    opening raised out of the attacker and ended it, so a benchmark never got that far.
    """
    pipeline.tenant("acme")
    device = isolation.ATTACKS["refusable_flood"].devices[0]
    creds = pipeline.device("acme", device)
    pipeline.start("web")
    pipeline.start("relay")
    pipeline.start("scheduler")
    counts = [0] * len(isolation.COUNTS)
    isolation.attacker(
        pipeline.settings.amqp_url,
        "refusable_flood",
        75.0,
        counts,
        {device: creds["password"]},
    )
    seen = dict(zip(isolation.COUNTS, counts, strict=True))
    print(seen)
    assert quarantine.active(pipeline.db, device, time.time()) is not None
    assert pipeline.metric("relay", QUARANTINED, tenant="acme") == 1
    assert seen["disconnected"] >= 2  # closed when quarantined, and again after reconnects
    assert seen["logins_refused"] >= 10, seen
    assert seen["last_admitted_ms"] < seen["first_refused_ms"], seen  # none admitted after
    assert pipeline.alive("relay") and pipeline.alive("web")


def test_a_lift_ends_the_sweep_and_what_was_queued_before_is_no_new_offence(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("lift")
    pipeline.device("lift", "lifted-1")
    quarantiner = Quarantiner(pipeline.settings, pipeline.db)
    try:
        now = time.time()
        imposed = quarantine.impose(
            pipeline.db, "lifted-1", "lift", now, 300.0, 3600.0, quarantine.REASON
        )
        assert imposed is not None
        quarantiner._sweep["lifted-1"] = time.monotonic() + 65  # as act() puts it
        assert quarantiner._still_held(["lifted-1"]) == ["lifted-1"]
        assert quarantine.lift(pipeline.db, "lifted-1", time.time(), "boss")
        # The relay's sweep lets it be (it would close its reconnects for 65 s).
        assert quarantiner._still_held(["lifted-1"]) == []
        assert "lifted-1" not in quarantiner._sweep
        # Connected again, its queued junk still refused at the pace: no new offence...
        quarantiner.connected = lambda _device, _now: True  # type: ignore[assignment,method-assign]
        assert quarantiner.act("lifted-1", time.time()) is None
        record = quarantine.get(pipeline.db, "lifted-1")
        assert record is not None and record.offences == 1 and record.lifted == "boss"
        # ...until a whole refusal window after the lift.
        window = pipeline.settings.quarantine_window_s
        again = quarantiner.act("lifted-1", time.time() + window + 1)
        assert again is not None and again.offences == 2
    finally:
        quarantiner.close()


def test_a_new_quarantine_is_closed_with_the_sweep_full_and_no_close_left(
    pipeline: Pipeline,
) -> None:
    """With the sweep full (not swept) and the worker's budget spent, a quarantine just
    imposed still gets its one close: before, nothing closed its open connection, which
    went on publishing until it was refused over budget again."""
    pipeline.tenant("full")
    creds = pipeline.device("full", "full-1")
    pipeline.start("web")
    quarantiner = Quarantiner(pipeline.settings, pipeline.db)
    quarantiner._stop.set()  # no sweep pass: it would drop the unrecorded devices below
    quarantiner._sweeper.join()
    connection = _connect(pipeline, creds)
    try:
        for i in range(SWEEP_MAX_DEVICES):
            quarantiner._sweep[f"other-{i}"] = time.monotonic() + 600
        while quarantiner.closes.take("close", time.monotonic()):
            pass
        quarantiner.connected = lambda _device, _now: True  # type: ignore[assignment,method-assign]
        record = quarantiner.act("full-1", time.time())
        assert record is not None and "full-1" not in quarantiner._sweep
        wait_for(lambda: not _is_open(connection), 10, "the new quarantine's connection closed")
    finally:
        quarantiner.close()
        with suppress(Exception):
            connection.close()


def _connect(pipeline: Pipeline, creds: dict[str, str]) -> pika.BlockingConnection:
    params = pika.URLParameters(pipeline.settings.amqp_url)
    params.credentials = pika.PlainCredentials(creds["username"], creds["password"])
    return pika.BlockingConnection(params)


def _is_open(connection: pika.BlockingConnection) -> bool:
    try:
        connection.process_data_events(time_limit=0)
    except AMQPConnectionError:
        return False
    return bool(connection.is_open)


def _sweep_calls() -> dict[tuple[str, str], float]:
    return {
        (call, answer): SWEEP_CALLS.labels(call, answer)._value.get()
        for call in ("list", "sweep_close")
        for answer in ("asked", "limited")
    }


def test_the_sweep_serves_many_quarantined_devices_with_one_list_within_its_budget(
    pipeline: Pipeline,
) -> None:
    """40 devices swept at once, 10 of them connected: one list a pass finds the 10, a
    close each, nothing for the 30 others; the calls stay within the sweep's budget; and a
    swept device reconnecting every 0.5 s from the broker's auth cache is cut within a pass.
    Before, the sweep closed each of the 40 every 0.25 s (160 calls a second)."""
    pipeline.tenant("many")
    devices = [pipeline.device("many", f"swept-{i}") for i in range(40)]
    pipeline.start("web")
    quarantiner = Quarantiner(pipeline.settings, pipeline.db)
    connections = [_connect(pipeline, creds) for creds in devices[:10]]  # logins cached 60 s
    try:
        now = time.time()
        for creds in devices:
            imposed = quarantine.impose(
                pipeline.db, creds["username"], "many", now, 300.0, 3600.0, quarantine.REASON
            )
            assert imposed is not None
        before = _sweep_calls()
        started = time.monotonic()
        with quarantiner._sweep_lock:  # as act() puts them
            for creds in devices:
                quarantiner._sweep[creds["username"]] = started + 70
        wait_for(lambda: not any(_is_open(c) for c in connections), 5, "the 10 closed")
        closed_after = time.monotonic() - started
        time.sleep(2.0)  # nobody connected: a list a pass, no close
        elapsed = time.monotonic() - started
        calls = {k: v - before[k] for k, v in _sweep_calls().items()}
        print(f"closed after {closed_after:.2f} s; calls in {elapsed:.1f} s: {calls}")
        assert closed_after < 1.0
        assert calls["sweep_close", "asked"] == 10
        assert calls["list", "asked"] >= elapsed / 0.25 / 2  # a pass every 0.25 s at most
        assert calls["list", "asked"] + calls["sweep_close", "asked"] <= (
            SWEEP_CALLS_BURST + SWEEP_CALLS_PER_S * elapsed
        )

        # The attacker: reconnecting every 0.5 s, admitted by the broker's auth cache.
        lifetimes: list[float] = []
        for _ in range(6):
            opened = time.monotonic()
            try:
                attacker = _connect(pipeline, devices[0])
            except AMQPConnectionError:  # closed before its handshake ended: cut already
                lifetimes.append(time.monotonic() - opened)
            else:
                wait_for(lambda c=attacker: not _is_open(c), 5, "the reconnect closed")  # type: ignore[misc]
                lifetimes.append(time.monotonic() - opened)
            time.sleep(0.5)
        print(f"attacker's connections lasted {[round(t, 2) for t in lifetimes]} s")
        assert max(lifetimes) < 1.0  # a pass (0.25 s), the login and the polling
    finally:
        quarantiner.close()
        for connection in connections:
            with suppress(Exception):
                connection.close()
