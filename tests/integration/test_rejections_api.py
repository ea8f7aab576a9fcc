"""The rejections ledger, counts by reason per tenant, and replay after the cause is fixed,
on the real relay, scheduler, archiver, broker and database."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from fairway.devtools.processes import wait_for
from fairway.kernel import topology
from fairway.storage import accounts, mongo
from tests.harness import Pipeline, reading_query, stored_readings
from tests.integration.test_web_api import Api
from web import create_app

PASSWORD = "correct horse battery"


def _reasons(api: Api, query: str = "") -> list[tuple[str | None, str]]:
    answer = api("GET", f"/api/rejections{query}")
    assert answer.status_code == 200, answer.json
    return sorted((r["device"], r["reason"]) for r in answer.json["rejections"])


@pytest.mark.settings(device_cache_ttl_s=3.0)
def test_ledger_counts_and_replay(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.tenant("other")
    pipeline.device("acme", "d1")
    pipeline.device("other", "o1")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    api: dict[str, Api] = {}
    for name, role, tenant in (
        ("op", accounts.OPERATOR, None),
        ("adm", accounts.ADMIN, "acme"),
        ("view", accounts.VIEWER, "acme"),
        ("adm_other", accounts.ADMIN, "other"),
    ):
        accounts.create_user(pipeline.db, name, PASSWORD, role, tenant)
        api[name] = Api(app.test_client(), accounts.create_api_token(pipeline.db, name, 3600))
    for role in ("relay", "scheduler", "archiver"):
        pipeline.start(role)
    now = time.time()
    pipeline.publish(
        [
            ("newdev.env", {"ts": now, "id": "r1", "values": {"temp": 1.5}}, {}),
            ("d1.env", {"ts": now + 3600, "id": "fast", "values": {"temp": 2.5}}, {}),
            ("d1.env", b'{"ts": 1, "val', {}),
            ("o1.env", {"ts": now + 3600, "values": {"temp": 3}}, {}),
        ]
    )
    wait_for(lambda: pipeline.db[mongo.REJECTIONS].count_documents({}) == 4, 30, "4 archived")

    # The ledger: tenant-wide, by reason; another tenant's and tenant-less ones hidden.
    assert _reasons(api["adm"]) == [("d1", "clock_skew"), ("d1", "malformed_json")]
    assert _reasons(api["adm"], "?reason=clock_skew") == [("d1", "clock_skew")]
    assert _reasons(api["adm"], "?device=newdev") == []  # not theirs (yet)
    assert len(_reasons(api["op"])) == 4
    assert _reasons(api["op"], "?tenant=other") == [("o1", "clock_skew")]
    assert api["adm"]("GET", "/api/rejections?tenant=other").status_code == 404

    # Counts by reason per tenant, hour by hour (maintained by the archiver).
    counts = api["op"]("GET", "/api/rejections/counts?hours=2").json["tenants"]
    by_tenant = {c["tenant"]: c["by_reason"] for c in counts}
    assert by_tenant == {
        None: {"unknown_device": 1},
        "acme": {"clock_skew": 1, "malformed_json": 1},
        "other": {"clock_skew": 1},
    }
    mine = api["adm"]("GET", "/api/rejections/counts").json["tenants"]
    assert [(c["tenant"], c["total"], len(c["hours"])) for c in mine] == [("acme", 2, 1)]
    assert api["adm"]("GET", "/api/rejections/counts?hours=0").status_code == 400
    assert api["adm"]("GET", "/api/rejections/counts?hours=169").status_code == 400

    # Registering the unknown device makes its earlier rejection the admin's to replay.
    assert api["adm"]("POST", "/api/devices", {"device": "newdev"}).status_code == 201
    [unknown] = api["adm"]("GET", "/api/rejections?device=newdev").json["rejections"]
    assert (unknown["reason"], unknown["tenant"], unknown["replayable"]) == (
        "unknown_device",
        None,
        True,
    )
    by_reason = {r["reason"]: r for r in api["adm"]("GET", "/api/rejections").json["rejections"]}
    assert by_reason["malformed_json"]["replay_blocker"] == "not_replayable"
    foreign = api["op"]("GET", "/api/rejections?tenant=other").json["rejections"][0]["id"]

    replay_by_viewer = api["view"]("POST", "/api/rejections/replay", {"ids": [unknown["id"]]})
    assert replay_by_viewer.status_code == 403
    assert api["adm"]("POST", "/api/rejections/replay", {"ids": []}).status_code == 400
    # Just registered: the relays' registry cache may still say "unknown" (3 s here).
    soon = api["adm"]("POST", "/api/rejections/replay", {"ids": [unknown["id"]]}).json
    assert [r.get("error") for r in soon["results"]] == ["too_soon"]
    time.sleep(pipeline.settings.device_cache_ttl_s + 0.5)
    answer = api["adm"](
        "POST",
        "/api/rejections/replay",
        {"ids": [unknown["id"], by_reason["malformed_json"]["id"], foreign]},
    )
    assert answer.status_code == 200, answer.json
    outcomes = [(r["outcome"], r.get("error")) for r in answer.json["results"]]
    assert outcomes == [("sent", None), ("refused", "not_replayable"), ("refused", "not_found")]
    # Through the relay's checks into storage, exactly once, under the body's id.
    pipeline.wait_stored(1, device="newdev")
    assert pipeline.stored(_id="acme:newdev:r1") == 1

    def replay_state(rejection_id: str) -> dict[str, Any]:
        return api["adm"]("GET", f"/api/rejections/{rejection_id}").json["replay"]

    state = wait_for(
        lambda: (s := replay_state(unknown["id"])) and s["state"] == "stored" and s, 20, "stored"
    )
    assert (state["by"], state["readings"], state["stored"]) == ("adm", ["acme:newdev:r1"], 1)

    # A second replay is refused, from the API and from the CLI.
    again = api["adm"]("POST", "/api/rejections/replay", {"ids": [unknown["id"]]}).json
    assert [r.get("error") for r in again["results"]] == ["already_replayed"]
    cli = subprocess.run(
        [sys.executable, "-m", "fairway", "rejections", "replay", unknown["id"]],
        env={**pipeline.settings.environ(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and "already_replayed" in cli.stdout, cli.stdout + cli.stderr
    time.sleep(2)
    assert pipeline.stored(device="newdev") == 1

    # A clock an hour fast is still an hour fast: replayed, refused again, shown so.
    fast = by_reason["clock_skew"]["id"]
    cli = subprocess.run(
        [sys.executable, "-m", "fairway", "rejections", "replay", fast, "--by", "ops"],
        env={**pipeline.settings.environ(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    refused = wait_for(
        lambda: (s := replay_state(fast)) and s["state"] == "refused" and s, 30, "refused again"
    )
    assert (refused["by"], refused["reason"]) == ("ops", "clock_skew")
    assert pipeline.stored(device="d1") == 0


# A device batch travels in one bundle: the full queue (one reading before it) refuses
# the bundle, and each of the batch's readings is refused on its own, with its index.
@pytest.mark.settings(device_cache_ttl_s=1.0)
def test_replaying_device_batches(pipeline: Pipeline) -> None:
    """A batch refused whole is replayed whole; readings refused one by one (by a full
    tenant queue, archived as the relay's tenant message) are replayed as readings."""
    pipeline.tenant("acme")
    pipeline.tenant("tight", max_backlog=1)
    pipeline.device("tight", "t1")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    accounts.create_user(pipeline.db, "op", PASSWORD, accounts.OPERATOR, None)
    api = Api(app.test_client(), accounts.create_api_token(pipeline.db, "op", 3600))
    for role in ("relay", "archiver"):  # no scheduler yet: tenant.tight stays full
        pipeline.start(role)
    now = time.time()
    pipeline.publish([("t1.env", {"ts": now, "id": "s0", "values": {"v": 9}}, {})])
    tight = f"{topology.TENANT_QUEUE_PREFIX}tight"
    wait_for(lambda: pipeline.depth(tight) == 1, 30, "the tight queue full")
    batch = [{"ts": now - i, "id": f"b{i}", "values": {"v": i}} for i in range(3)]
    pipeline.publish([("newdev.env", batch, {}), ("t1.env", {"readings": batch}, {})])
    wait_for(lambda: pipeline.db[mongo.REJECTIONS].count_documents({}) == 4, 30, "4 archived")
    ledger = api("GET", "/api/rejections?limit=10").json["rejections"]
    whole = next(r for r in ledger if r["device"] == "newdev")
    assert (whole["reason"], whole["index"], whole["replayable"]) == ("unknown_device", None, True)
    full = sorted((r for r in ledger if r["device"] == "t1"), key=lambda r: r["index"])
    assert [(r["reason"], r["index"]) for r in full] == [
        ("tenant_backlog_full", i) for i in range(3)
    ]

    pipeline.device("acme", "newdev")
    pipeline.start("scheduler")
    pipeline.wait_stored(1, device="t1")  # the one the full queue took
    time.sleep(1.5)  # the relays' registry cache forgets that newdev was unknown
    ids = [whole["id"], *(r["id"] for r in full)]
    answer = api("POST", "/api/rejections/replay", {"ids": ids}).json
    assert [r["outcome"] for r in answer["results"]] == ["sent"] * 4, answer
    pipeline.wait_stored(3, device="newdev")
    pipeline.wait_stored(4, device="t1")
    assert sorted(d["_id"] for d in stored_readings(pipeline.db, reading_query(device="t1"))) == [
        "tight:t1:b0",
        "tight:t1:b1",
        "tight:t1:b2",
        "tight:t1:s0",
    ]
    state = wait_for(
        lambda: (
            (s := api("GET", f"/api/rejections/{whole['id']}").json["replay"])
            and s["state"] == "stored"
            and s
        ),
        20,
        "the batch stored",
    )
    assert (state["stored"], len(state["readings"])) == (3, 3)
