"""Isolation end to end (issue 10): several attackers at once against one real pipeline
while a quiet tenant works.

One pipeline (relay, scheduler, web app, push gateway, a Celery worker) on a RabbitMQ
node of its own whose auth backend is the pipeline's web app on a free port (device
logins need neither port 8080 nor its lock). At the same moment:

* ``hostile-junk`` (tenant ``hostile``) publishes oversized bodies (``too_large``) and
  ``hostile-bad`` a flood of broken JSON (``malformed_json``), beyond its refusal budget;
* four devices of tenant ``flood`` publish a burst of valid readings into a backlog of
  two readings (``tenant_backlog_full``);
* a stranger tries AMQP logins as ``hostile`` devices with wrong passwords and as ids
  nobody registered (refused by the web app's broker auth endpoint);
* a ``hostile`` viewer floods the job queue (429 ``job_quota``), mints push tokens as
  fast as it can (429 ``push_token_rate``) and holds gateway streams with them (429
  ``user_session_limit``), and posts bodies over the size limit (413 ``too_large``), as
  does a stranger;

while tenant ``quiet``'s device publishes readings with known ids, its other devices log
in, and its admin reads the API, runs reports and follows the live stream.

Then: every process is alive and was never restarted; every quiet reading is stored
exactly once (one query, after the attack); each attacker's excess was refused with its
reason and counted, per tenant where the docs say so; the quiet tenant was refused
nothing. Every figure asserted is a count, never a latency.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
import requests

from fairway.devtools import attacks, celery_workers
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel import topology
from fairway.kernel.contract import split_reading_id
from fairway.kernel.settings import Settings
from fairway.provision import bind_devices
from fairway.storage import accounts, registry
from fairway.storage.mongo import TELEMETRY
from tests.harness import FairwayProcess, LocalNode, Pipeline
from tests.integration.conftest import pipeline_on_own_broker
from tests.integration.test_tasks import insert_readings

QUIET, HOSTILE, FLOOD = "quiet", "hostile", "flood"
QUIET_DEVICE, QUIET_HISTORY = "quiet-1", "quiet-history"
QUIET_READINGS = 200  # published at QUIET_RATE, each waiting for its confirm
QUIET_RATE = 20.0
QUIET_LOGINS = 5  # quiet devices logging in for the first time during the attack
QUIET_PAGES = 30  # API calls of the quiet admin during the attack
ATTACK_S = QUIET_READINGS / QUIET_RATE  # how long the time-bound attackers go on
JUNK = 30  # oversized bodies (all within the device's refusal burst: kept)
# Over the contract's 64 KiB, within the broker's 128 KiB; the second needs two body
# frames (frame_max 131,072 less 8), so the consumers' connection takes pika's own path.
JUNK_SIZES = (100_000, 131_065)
BAD = 1200  # broken JSON bodies: 100 kept (the burst), the rest over budget, and
# under the quarantine's 2,000 units, so the device stays connected throughout
FLOOD_DEVICES = [f"flood-{i}" for i in range(4)]
FLOOD_EACH = 400  # readings per flood device, in one unconfirmed burst
FLOOD_BACKLOG = 2  # readings: x-max-length 2 bundles, x-max-length-bytes 512
GUESSED = [f"hostile-{i}" for i in range(3)]  # registered ids the stranger guesses at
BIG_BODY = 1_100_000  # over FAIRWAY_WEB_MAX_BODY_BYTES (1 MiB)
BIG_POSTS = 4  # per attacker (the stranger and the hostile viewer)
PUSH_MINTS = 40  # the push-token burst is 20, the stream cap per user 10
PASSWORD = "correct horse battery staple"
QUIET_ADMIN, HOSTILE_VIEWER = "quiet-admin", "hostile-viewer"
# Each HTTP attacker calls from its own loopback address, the quiet admin from 127.0.0.1.
SOURCE = {"job": "127.0.0.2", "stranger": "127.0.0.3", "big": "127.0.0.4", "push": "127.0.0.5"}


@pytest.fixture
def own_broker(base_settings: Settings, tmp_path: Path) -> Iterator[tuple[Pipeline, LocalNode]]:
    """A pipeline on a RabbitMQ node of its own, authenticating devices against the
    pipeline's web app on a free port."""
    with pipeline_on_own_broker(base_settings, tmp_path) as (pipeline, node):
        yield pipeline, node


def _metric(proc: FairwayProcess, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    samples = proc.metrics(name).get(name, {})
    return sum(v for text, v in samples.items() if all(w in text.split(",") for w in want))


def _answer(answer: requests.Response, ok: int) -> str:
    """``ok``, or the refusal's ``error`` code; ``<code>_without_message`` if the answer
    is not the API's ``{error, message}`` with a sentence in it."""
    outcome = attacks.outcome(answer, ok)
    if outcome == "ok":
        return outcome
    with suppress(ValueError, AttributeError, TypeError):
        if answer.json().get("message"):
            return outcome
    return f"{outcome}_without_message"


def _register(pipeline: Pipeline, devices: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Register devices as the web app and the CLI do (keyed password hashes), then bind
    them all at once; credentials by device id."""
    key = registry.device_hash_key(pipeline.settings.device_hash_key, pipeline.settings.secret_key)
    creds = {d: registry.register_device(pipeline.db, t, d, key) for t, d in devices}
    bind_devices(pipeline.settings, devices)
    return creds


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(c) for c in f.read().split()}


class Side:
    """One party's thread: what it saw (a tally and notes), and the exception that ended
    it, if any (the test fails on it: an attacker that died attacked less)."""

    def __init__(self, name: str, run: Callable[[Side], None]) -> None:
        self.name = name
        self.tally: Counter[str] = Counter()
        self.notes: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._run = run
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        try:
            self._run(self)
        except BaseException as exc:  # reported by the test
            self.error = exc


# -- the attackers --------------------------------------------------------------------
def _device_flood(
    pipeline: Pipeline, creds: dict[str, str], bodies: Callable[[int], bytes], count: int
) -> Callable[[Side], None]:
    """Publish ``count`` bodies as the device, each confirmed: what the broker took."""

    def run(side: Side) -> None:
        with pipeline.channel(creds["username"], creds["password"]) as channel:
            channel.confirm_delivery()
            for n in range(count):
                channel.basic_publish(topology.TELEMETRY, f"{creds['username']}.env", bodies(n))
                side.tally["confirmed"] += 1

    return run


def _backlog_flood(pipeline: Pipeline, flooders: list[dict[str, str]]) -> Callable[[Side], None]:
    """Every flood device publishes its readings in one burst (no confirms, as a script
    would), then waits until the broker has taken them all (a confirmed marker each)."""

    def run(side: Side) -> None:
        note = "x" * 200  # about 300 bytes a reading: two fit the backlog, a bundle not
        for creds in flooders:
            device = creds["username"]
            with pipeline.channel(device, creds["password"]) as channel:
                for n in range(FLOOD_EACH):
                    body = {"ts": time.time(), "values": {"n": n, "note": note}}
                    channel.basic_publish(
                        topology.TELEMETRY,
                        f"{device}.env",
                        orjson.dumps(body),
                        pika.BasicProperties(message_id=f"{device}-{n}"),
                    )
                    side.tally["sent"] += 1
                channel.connection.process_data_events(0)

    return run


def _stranger_logins(amqp_url: str) -> Callable[[Side], None]:
    """From three threads for the attack's length: wrong passwords for registered hostile
    ids, and ids nobody registered."""

    def step(slot: int, n: int) -> str:
        if n % 3 == 1:
            user, kind = f"ghost-{slot}-{n}", "unknown"
        else:
            user, kind = GUESSED[n % len(GUESSED)], "guessed"
        return f"{kind}_{attacks.try_login(amqp_url, user, f'wrong-{slot}-{n}')}"

    def run(side: Side) -> None:
        counts: dict[str, int] = {}
        attacks.hammer(ATTACK_S, step, counts, threads=3)
        side.tally.update(counts)

    return run


def _job_flood(web: str, token: str, report: dict[str, Any]) -> Callable[[Side], None]:
    """Four threads submit reports for the attack's length, 0.1 s after each refusal."""
    headers = {"Authorization": f"Bearer {token}"}
    sessions = [attacks.http_session(SOURCE["job"]) for _ in range(4)]

    def step(slot: int, n: int) -> str:
        answer = sessions[slot].post(web + "/api/reports", json=report, headers=headers, timeout=30)
        outcome = _answer(answer, 202)
        if outcome != "ok":
            time.sleep(0.1)
        return outcome

    def run(side: Side) -> None:
        counts: dict[str, int] = {}
        attacks.hammer(ATTACK_S, step, counts, threads=4)
        side.tally.update(counts)

    return run


def _push_grab(web: str, token: str, streams: list[Any]) -> Callable[[Side], None]:
    """Mint push tokens back to back and open a stream with each, keeping it open."""
    headers = {"Authorization": f"Bearer {token}"}

    def run(side: Side) -> None:
        session = attacks.http_session(SOURCE["push"])
        for _ in range(PUSH_MINTS):
            minted = session.get(web + "/api/push-token", headers=headers, timeout=30)
            outcome = _answer(minted, 200)
            side.tally[outcome] += 1
            if outcome != "ok":
                continue
            body = minted.json()
            stream = attacks.http_session(SOURCE["push"]).get(
                body["url"] + "/events", params={"token": body["token"]}, stream=True, timeout=30
            )
            if stream.status_code == 200:
                streams.append(stream)
                side.tally["stream_open"] += 1
            else:
                side.tally["gateway_" + _answer(stream, 200)] += 1
                stream.close()

    return run


def _big_bodies(web: str, token: str) -> Callable[[Side], None]:
    """Bodies over the size limit: a stranger's logins and the hostile viewer's reports."""
    body = b"x" * BIG_BODY

    def run(side: Side) -> None:
        stranger = attacks.http_session(SOURCE["stranger"])
        viewer = attacks.http_session(SOURCE["big"])
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for _ in range(BIG_POSTS):
            for session, path, headers in (
                (stranger, "/api/login", {"Content-Type": "application/json"}),
                (viewer, "/api/reports", auth),
            ):
                answer = session.post(web + path, data=body, headers=headers, timeout=30)
                side.tally[f"{answer.status_code}_{_answer(answer, 200)}"] += 1

    return run


# -- the quiet tenant -------------------------------------------------------------------
def _quiet_device(pipeline: Pipeline, creds: dict[str, str]) -> Callable[[Side], None]:
    """QUIET_READINGS readings at QUIET_RATE, each confirmed, ids q-0, q-1, ..."""

    def run(side: Side) -> None:
        with pipeline.channel(creds["username"], creds["password"]) as channel:
            channel.confirm_delivery()
            started = time.monotonic()
            for n in range(QUIET_READINGS):
                time.sleep(max(0.0, started + n / QUIET_RATE - time.monotonic()))
                body = orjson.dumps({"ts": time.time(), "values": {"temp": 20.0 + n % 7}})
                try:
                    channel.basic_publish(
                        topology.TELEMETRY,
                        f"{QUIET_DEVICE}.env",
                        body,
                        pika.BasicProperties(message_id=f"q-{n}", delivery_mode=2),
                    )
                    side.tally["confirmed"] += 1
                except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
                    side.tally[type(exc).__name__] += 1

    return run


def _quiet_logins(amqp_url: str, devices: list[dict[str, str]]) -> Callable[[Side], None]:
    """Each quiet device logs in once (a first login: no cache answers it), spread out."""

    def run(side: Side) -> None:
        for creds in devices:
            time.sleep(ATTACK_S / (len(devices) + 1))
            side.tally[attacks.try_login(amqp_url, creds["username"], creds["password"])] += 1

    return run


def _quiet_admin(web: str, token: str, report: dict[str, Any]) -> Callable[[Side], None]:
    """QUIET_PAGES pages of the API, one every 0.25 s or as they come, and two reports
    submitted among them (a count, not a time: under load the answers come slower)."""
    headers = {"Authorization": f"Bearer {token}"}

    def run(side: Side) -> None:
        session = requests.Session()
        jobs: list[str] = []
        for n in range(QUIET_PAGES):
            path = ("/api/devices", "/api/me")[n % 2]
            answer = session.get(web + path, headers=headers, timeout=30)
            side.tally[f"get_{answer.status_code}"] += 1
            if n in (4, QUIET_PAGES // 2):
                answer = session.post(
                    web + "/api/reports", json=report, headers=headers, timeout=30
                )
                side.tally[f"report_{answer.status_code}"] += 1
                if answer.status_code == 202:
                    jobs.append(answer.json()["url"])
            time.sleep(0.25)
        side.notes["jobs"] = jobs

    return run


def _quiet_stream(web: str, token: str, stop: threading.Event) -> Callable[[Side], None]:
    """One live stream: the quiet device's telemetry events on it, until ``stop``."""
    headers = {"Authorization": f"Bearer {token}"}

    def run(side: Side) -> None:
        minted = requests.get(web + "/api/push-token", headers=headers, timeout=30)
        side.tally[f"mint_{minted.status_code}"] += 1
        body = minted.json()
        stream = requests.get(
            body["url"] + "/events", params={"token": body["token"]}, stream=True, timeout=30
        )
        side.tally[f"stream_{stream.status_code}"] += 1
        threading.Thread(target=lambda: (stop.wait(), stream.close()), daemon=True).start()
        kind = ""
        with suppress(requests.RequestException, AttributeError, ValueError):
            for line in stream.iter_lines():
                if line.startswith(b"event:"):
                    kind = line[6:].strip().decode()
                elif (
                    line.startswith(b"data:")
                    and kind == "telemetry"
                    and orjson.loads(line[5:]).get("device") == QUIET_DEVICE
                ):
                    side.tally["quiet_events"] += 1
                if stop.is_set():
                    break

    return run


# -- the test -----------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_attackers_at_once_leave_the_quiet_tenant_untouched(
    own_broker: tuple[Pipeline, LocalNode], tmp_path: Path
) -> None:
    pipeline, node = own_broker
    db = pipeline.db
    pipeline.tenant(QUIET)
    pipeline.tenant(HOSTILE)
    pipeline.tenant(FLOOD, max_backlog=FLOOD_BACKLOG)
    logins = [f"quiet-login-{i}" for i in range(QUIET_LOGINS)]
    creds = _register(
        pipeline,
        [(QUIET, d) for d in (QUIET_DEVICE, QUIET_HISTORY, *logins)]
        + [(HOSTILE, d) for d in ("hostile-junk", "hostile-bad", *GUESSED)]
        + [(FLOOD, d) for d in FLOOD_DEVICES],
    )
    quiet, junk, bad = creds[QUIET_DEVICE], creds["hostile-junk"], creds["hostile-bad"]
    quiet_logins = [creds[d] for d in logins]
    flooders = [creds[d] for d in FLOOD_DEVICES]
    accounts.create_user(db, QUIET_ADMIN, PASSWORD, accounts.ADMIN, QUIET)
    accounts.create_user(db, HOSTILE_VIEWER, PASSWORD, accounts.VIEWER, HOSTILE)
    quiet_token = accounts.create_api_token(db, QUIET_ADMIN, 3600)
    hostile_token = accounts.create_api_token(db, HOSTILE_VIEWER, 3600)
    # What the reports read: a day of one hostile device (each hostile report takes the
    # worker a while), an hour of quiet history.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    day = hour - timedelta(days=1)
    insert_readings(
        db,
        HOSTILE,
        GUESSED[0],
        [day + timedelta(seconds=43.2 * i) for i in range(2000)],
        [{"temp": 20.0 + i % 7, "hum": 50.0 + i % 3} for i in range(2000)],
        prefix="old",
    )
    insert_readings(
        db,
        QUIET,
        QUIET_HISTORY,
        [hour + timedelta(seconds=10 * i) for i in range(360)],
        [{"temp": 20.0 + i % 5} for i in range(360)],
        prefix="old",
    )
    quiet_report = {
        "from": hour.timestamp(),
        "to": hour.timestamp() + 3600,
        "bucket": 600,
        "device": QUIET_HISTORY,
    }
    hostile_report = {"from": day.timestamp(), "to": hour.timestamp(), "bucket": 600}

    web = pipeline.start("web")
    relay = pipeline.start("relay")
    scheduler = pipeline.start("scheduler")
    gateway = pipeline.start("gateway")
    worker = celery_workers.start(
        pipeline.with_(metrics_port=free_port()), tmp_path / "worker.log", concurrency=1
    )
    try:
        pool = _children(worker.pid)
        web_url = f"http://127.0.0.1:{pipeline.settings.web_port}"
        amqp_url = pipeline.settings.amqp_url
        node_pids = node.pids()

        hostile_streams: list[Any] = []
        stop_stream = threading.Event()
        sides = {
            s.name: s
            for s in (
                Side(
                    "junk", _device_flood(pipeline, junk, lambda n: b"x" * JUNK_SIZES[n % 2], JUNK)
                ),
                Side("bad", _device_flood(pipeline, bad, lambda n: b"{not json", BAD)),
                Side("backlog", _backlog_flood(pipeline, flooders)),
                Side("logins", _stranger_logins(amqp_url)),
                Side("jobs", _job_flood(web_url, hostile_token, hostile_report)),
                Side("push", _push_grab(web_url, hostile_token, hostile_streams)),
                Side("big", _big_bodies(web_url, hostile_token)),
                Side("quiet_device", _quiet_device(pipeline, quiet)),
                Side("quiet_logins", _quiet_logins(amqp_url, quiet_logins)),
                Side("quiet_admin", _quiet_admin(web_url, quiet_token, quiet_report)),
                Side("quiet_stream", _quiet_stream(web_url, quiet_token, stop_stream)),
            )
        }
        started = time.monotonic()
        for side in sides.values():
            side.thread.start()
        for name, side in sides.items():
            if name != "quiet_stream":
                side.thread.join(ATTACK_S + 90)
        attack_s = time.monotonic() - started
        for stream in hostile_streams:
            stream.close()
        report = {n: (dict(s.tally), repr(s.error) if s.error else None) for n, s in sides.items()}
        print(f"attack over in {attack_s:.1f} s: {report}")
        for name, side in sides.items():
            if name != "quiet_stream":
                assert not side.thread.is_alive(), f"{name} still running"
                assert side.error is None, f"{name}: {side.error!r}"

        # -- settled: from the processes' counters, not the database -------------------
        def flood_settled() -> bool:
            accepted = relay.metric("fairway_relay_accepted_total", tenant=FLOOD)
            refused = relay.metric(
                "fairway_relay_rejected_total", reason="tenant_backlog_full"
            ) + relay.metric(
                "fairway_relay_rejected_over_budget_total",
                tenant=FLOOD,
                reason="tenant_backlog_full",
            )
            stored = scheduler.metric("fairway_scheduler_stored_total", tenant=FLOOD)
            return accepted + refused == len(FLOOD_DEVICES) * FLOOD_EACH and stored >= accepted

        def contract_refused(reason: str) -> float:
            return relay.metric("fairway_relay_rejected_total", reason=reason) + relay.metric(
                "fairway_relay_rejected_over_budget_total", tenant=HOSTILE, reason=reason
            )

        wait_for(
            lambda: (
                scheduler.metric("fairway_scheduler_stored_total", tenant=QUIET) >= QUIET_READINGS
            ),
            60,
            "the quiet readings stored",
        )
        wait_for(flood_settled, 60, "every flood reading stored or refused")
        junk_sent, bad_sent = sides["junk"].tally["confirmed"], sides["bad"].tally["confirmed"]
        wait_for(lambda: contract_refused("too_large") == junk_sent, 60, "the junk refused")
        wait_for(lambda: contract_refused("malformed_json") == bad_sent, 60, "the bad refused")
        wait_for(lambda: relay.metric("fairway_relay_held") == 0, 30, "the relay idle")

        # -- every quiet reading stored exactly once (one query) ------------------------
        keys = [split_reading_id(d["_id"]) for d in db[TELEMETRY].find({}, {"_id": 1})]
        docs = [
            {"tenant": t, "device": dev, "msg_id": m}
            for t, dev, m in keys
            if t in (QUIET, FLOOD) and dev != QUIET_HISTORY
        ]
        quiet_ids = Counter(d["msg_id"] for d in docs if d["tenant"] == QUIET)
        assert quiet_ids == Counter(f"q-{n}" for n in range(QUIET_READINGS))
        assert {d["device"] for d in docs if d["tenant"] == QUIET} == {QUIET_DEVICE}
        flood_ids = Counter(d["msg_id"] for d in docs if d["tenant"] == FLOOD)
        assert max(flood_ids.values(), default=1) == 1  # a flood reading stored is stored once

        # -- what `rejected` kept: reasons, devices, tenants ---------------------------
        kept = pipeline.rejected(0)
        by_reason = Counter(h[topology.REASON_HEADER] for h, _ in kept)
        assert set(by_reason) <= {"too_large", "malformed_json", "tenant_backlog_full"}, by_reason
        for headers, body in kept:
            reason, device = headers[topology.REASON_HEADER], headers[topology.DEVICE_HEADER]
            assert not device.startswith("quiet") and headers.get(topology.TENANT_HEADER) != QUIET
            if reason == "too_large":
                assert device == "hostile-junk" and headers[topology.SIZE_HEADER] in JUNK_SIZES
                assert headers[topology.TENANT_HEADER] == HOSTILE  # from its ingest queue
            elif reason == "malformed_json":
                assert device == "hostile-bad" and headers[topology.TENANT_HEADER] == HOSTILE
            else:  # each refused flood reading kept with its tenant and its own body
                assert device in FLOOD_DEVICES and headers[topology.TENANT_HEADER] == FLOOD
                msg_id = f"{device}-{orjson.loads(body)['values']['n']}"
                assert msg_id not in flood_ids, f"{msg_id} both stored and refused"
        for reason, count in by_reason.items():
            assert count == relay.metric("fairway_relay_rejected_total", reason=reason)

        # -- each attacker's excess refused with its reason, counted -------------------
        # Device junk: every oversized body kept as too_large (within the device's
        # burst); the broken JSON beyond the device's budget counted, not kept.
        # Contract refusals are decided before the registry look-up, charged to the tenant
        # whose ingest queue they came from.
        assert junk_sent == JUNK and by_reason["too_large"] == JUNK
        sizes = Counter(
            h[topology.SIZE_HEADER] for h, _ in kept if h[topology.REASON_HEADER] == "too_large"
        )
        assert sizes == {size: JUNK // 2 for size in JUNK_SIZES}, sizes
        assert bad_sent == BAD
        over_bad = relay.metric(
            "fairway_relay_rejected_over_budget_total", tenant=HOSTILE, reason="malformed_json"
        )
        assert over_bad > 0 and by_reason["malformed_json"] + over_bad == BAD
        assert _metric(relay, "fairway_devices_quarantined_total") == 0
        # Backlog flood: readings past the two-reading backlog refused, counted per tenant.
        flood_refused = by_reason["tenant_backlog_full"] + relay.metric(
            "fairway_relay_rejected_over_budget_total", tenant=FLOOD, reason="tenant_backlog_full"
        )
        assert sides["backlog"].tally["sent"] == len(FLOOD_DEVICES) * FLOOD_EACH
        assert flood_refused > 0
        assert sum(flood_ids.values()) + flood_refused == len(FLOOD_DEVICES) * FLOOD_EACH
        # Wrong device logins: each refused by the broker, each counted by the web app.
        logins = sides["logins"].tally
        assert logins["guessed_refused"] > 0 and logins["unknown_refused"] > 0, logins
        assert logins["guessed_admitted"] == logins["unknown_admitted"] == 0, logins
        refused_logins = "fairway_broker_auth_refused_total"
        bad_password = _metric(web, refused_logins, reason="bad_password", tenant=HOSTILE)
        assert (
            logins["guessed_refused"]
            <= bad_password
            <= logins["guessed_refused"] + logins["guessed_lost"]
        )
        unknown = _metric(web, refused_logins, reason="unknown_device", tenant="")
        assert (
            logins["unknown_refused"]
            <= unknown
            <= logins["unknown_refused"] + logins["unknown_lost"]
        )
        # Job flood: the user's quota full, the rest 429 job_quota, each counted.
        jobs = sides["jobs"].tally
        assert jobs["job_quota"] > 0 and set(jobs) <= {"ok", "job_quota"}, jobs
        assert (
            _metric(web, "fairway_jobs_refused_total", reason="job_quota", tenant=HOSTILE)
            == (jobs["job_quota"])
        )
        assert (
            _metric(web, "fairway_web_refused_total", reason="job_quota", tenant=HOSTILE)
            == (jobs["job_quota"])
        )
        # Push tokens and streams: minting throttled, streams capped per user.
        push = sides["push"].tally
        assert push["push_token_rate"] > 0 and push["gateway_user_session_limit"] > 0, push
        assert push["stream_open"] == pipeline.settings.gateway_max_sessions_per_user, push
        assert (
            _metric(web, "fairway_web_refused_total", reason="push_token_rate", tenant=HOSTILE)
            == push["push_token_rate"]
        )
        assert (
            _metric(
                gateway,
                "fairway_gateway_refused_total",
                reason="user_session_limit",
                tenant=HOSTILE,
            )
            == push["gateway_user_session_limit"]
        )
        # Oversized bodies: 413 too_large with a message, unread, counted (tenant "": the
        # body is refused before anyone is identified).
        big = sides["big"].tally
        assert big == {"413_too_large": 2 * BIG_POSTS}, big
        assert _metric(web, "fairway_web_refused_total", reason="too_large", tenant="") == (
            2 * BIG_POSTS
        )

        # -- the quiet tenant: served, and refused nothing ----------------------------
        assert sides["quiet_device"].tally == {"confirmed": QUIET_READINGS}
        assert sides["quiet_logins"].tally == {"admitted": QUIET_LOGINS}
        admin = sides["quiet_admin"].tally
        assert admin == {"get_200": QUIET_PAGES, "report_202": 2}, admin
        session = requests.Session()
        headers = {"Authorization": f"Bearer {quiet_token}"}
        states: dict[str, str] = {}

        def quiet_jobs_done() -> bool:
            for url in sides["quiet_admin"].notes["jobs"]:
                answer = session.get(web_url + url, headers=headers, timeout=30)
                states[url] = answer.json()["state"]
            return all(s in ("SUCCESS", "FAILURE") for s in states.values())

        wait_for(quiet_jobs_done, 90, "the quiet reports finished")
        assert set(states.values()) == {"SUCCESS"}, states
        wait_for(lambda: sides["quiet_stream"].tally["quiet_events"] > 0, 30, "a quiet live event")
        stop_stream.set()
        sides["quiet_stream"].thread.join(30)
        stream = sides["quiet_stream"]
        assert stream.error is None, repr(stream.error)
        assert stream.tally["mint_200"] == stream.tally["stream_200"] == 1, stream.tally
        for proc, name in (
            (web, "fairway_web_refused_total"),
            (web, "fairway_jobs_refused_total"),
            (web, "fairway_broker_auth_refused_total"),
            (gateway, "fairway_gateway_refused_total"),
            (gateway, "fairway_gateway_auth_failures_total"),
            (relay, "fairway_relay_rejected_over_budget_total"),
            (relay, "fairway_devices_quarantined_total"),
        ):
            assert _metric(proc, name, tenant=QUIET) == 0, name

        # -- every process alive, none restarted ---------------------------------------
        for role, proc in pipeline.procs.items():
            assert proc.alive(), f"{role} exited with {proc.proc.returncode}"
        assert worker.poll() is None, f"the worker exited with {worker.returncode}"
        assert _children(worker.pid) == pool, "a worker pool process was replaced"
        assert node.pids() == node_pids and all(os.path.exists(f"/proc/{p}") for p in node_pids)
        print(f"hostile test: attack {attack_s:.1f} s, kept {dict(by_reason)}")
    finally:
        celery_workers.stop(worker, timeout=10)  # a hostile job may still be running
