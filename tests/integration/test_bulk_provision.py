"""Bulk provisioning (POST /api/tenants/bulk, ``fairway tenant create-many``) on the real
broker and database: the same queues, arguments, bindings and records as single
provisioning, per-item outcomes, idempotent re-runs and the batch bound."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fairway.cli import main as cli
from fairway.kernel import topology
from fairway.provision_bulk import CHANNELS, PIPELINE_CHUNK, BulkProvisioner, TenantItem
from fairway.storage import accounts, mongo, registry
from tests.harness import Pipeline, management
from tests.integration.queue_types import BOTH
from web import create_app


def operator_api(pipeline: Pipeline) -> Any:
    """POST as an operator with an API token."""
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    accounts.create_user(pipeline.db, "op", "correct horse battery", accounts.OPERATOR, None)
    token = accounts.create_api_token(pipeline.db, "op", 3600)
    client = app.test_client()

    def post(path: str, body: Any) -> Any:
        return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})

    return post


def queues(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Every queue of the pipeline's vhost by name (one management call)."""
    vhost = urllib.parse.quote(pipeline.name, safe="")
    return {q["name"]: q for q in management("GET", f"queues/{vhost}?columns=name,arguments")}


def bindings(pipeline: Pipeline) -> set[tuple[str, str, str]]:
    """(exchange, queue, routing key) of every binding of the vhost."""
    vhost = urllib.parse.quote(pipeline.name, safe="")
    return {
        (b["source"], b["destination"], b["routing_key"])
        for b in management("GET", f"bindings/{vhost}")
        if b["destination_type"] == "queue"
    }


def batch(prefix: str, count: int, devices: int = 1) -> list[dict[str, Any]]:
    return [
        {"tenant": f"{prefix}{i:04d}", "devices": [f"{prefix}{i:04d}-d{j}" for j in range(devices)]}
        for i in range(count)
    ]


def tenant_shape(pipeline: Pipeline, tenant: str) -> dict[str, Any]:
    """What the broker and the registry hold for a tenant, without names or times."""
    found = queues(pipeline)
    doc = registry.tenant_document(pipeline.db, tenant) or {}
    return {
        "ingest": found[topology.ingest_queue_name(tenant)]["arguments"],
        "queue": found[topology.tenant_queue_name(tenant)]["arguments"]
        | {"x-dead-letter-routing-key": None},
        "record": sorted(doc),
        "weight": doc.get("weight"),
        "max_backlog": doc.get("max_backlog"),
    }


@BOTH
def test_bulk_declares_what_single_provisioning_declares(pipeline: Pipeline) -> None:
    pipeline.tenant("single", weight=3, max_backlog=500)
    pipeline.device("single", "single-d")
    post = operator_api(pipeline)
    answer = post(
        "/api/tenants/bulk",
        {"tenants": [{"tenant": "bulk", "weight": 3, "max_backlog": 500, "devices": ["bulk-d"]}]},
    )
    assert answer.status_code == 200, answer.get_json()
    assert tenant_shape(pipeline, "bulk") == tenant_shape(pipeline, "single")
    assert queues(pipeline)["tenant.bulk"]["arguments"]["x-dead-letter-routing-key"] == (
        "dead_letter.bulk"
    )
    assert {
        ("tenants", "tenant.bulk", "bulk"),
        ("telemetry", "ingest.bulk", "bulk-d.*"),
    } <= bindings(pipeline)
    device = registry.device_document(pipeline.db, "bulk-d") or {}
    single = registry.device_document(pipeline.db, "single-d") or {}
    assert sorted(device) == sorted(single) and device["tenant"] == "bulk"


def test_two_hundred_tenants_in_one_call_then_again(pipeline: Pipeline) -> None:
    post = operator_api(pipeline)
    body = {"tenants": batch("t", 200)}
    answer = post("/api/tenants/bulk", body)
    assert answer.status_code == 200, answer.get_json()
    report = answer.get_json()
    assert report["counts"] == {
        "tenants": {"created": 200, "exists": 0, "refused": 0},
        "devices": {"created": 200, "exists": 0, "refused": 0},
    }
    names = [f"t{i:04d}" for i in range(200)]
    assert [t["tenant"] for t in report["tenants"]] == names
    found, bound = queues(pipeline), bindings(pipeline)
    backlog = pipeline.settings.tenant_max_backlog
    for name in names:
        assert (
            found[f"tenant.{name}"]["arguments"]
            == topology.tenant_queue(name, backlog, pipeline.settings).arguments()
        )
        assert (
            found[f"ingest.{name}"]["arguments"]
            == topology.tenant_ingest_queue(name, pipeline.settings).arguments()
        )
        assert ("tenants", f"tenant.{name}", name) in bound
        assert ("telemetry", f"ingest.{name}", f"{name}-d0.*") in bound
    assert pipeline.db[mongo.TENANTS].count_documents({}) == 200
    # The passwords given work (keyed hashes under the app's key).
    key = registry.device_hash_key(pipeline.settings.device_hash_key, pipeline.settings.secret_key)
    for device in report["devices"][:3]:
        credential = registry.device_credential(pipeline.db, device["device"])
        assert registry.check_password(credential, device["password"], key).ok

    # The same batch again: everything exists, nothing changes, no password is shown.
    again = post("/api/tenants/bulk", body).get_json()
    assert again["counts"] == {
        "tenants": {"created": 0, "exists": 200, "refused": 0},
        "devices": {"created": 0, "exists": 200, "refused": 0},
    }
    assert {d["password"] for d in again["devices"]} == {None}
    assert len(queues(pipeline)) == len(found)
    assert pipeline.db[mongo.DEVICES].count_documents({}) == 200


def test_each_item_has_its_outcome_and_the_others_are_made(pipeline: Pipeline) -> None:
    pipeline.tenant("old", weight=2)
    pipeline.tenant("other")
    pipeline.device("other", "taken")
    registry.create_tenant(pipeline.db, "bare", 1, 10)  # recorded, its queues not declared
    with pipeline.channel() as channel:  # leftover queues with other arguments
        channel.queue_declare("tenant.clash", durable=True, arguments={"x-max-length": 7})
        channel.queue_declare("ingest.bare", durable=True, arguments={"x-max-length": 7})
    items = [
        {"tenant": "old", "weight": 5, "devices": ["old-new"]},
        {"tenant": "admin", "devices": ["admin-d"]},
        {"tenant": "clash", "devices": ["clash-d"]},
        {"tenant": "fresh", "devices": ["taken", "fresh-d", "fresh-d", "guest"]},
        {"tenant": "fresh"},
        {"tenant": "last", "devices": ["last-d"]},
        {"tenant": "bare", "devices": ["bare-d"]},
    ]
    with BulkProvisioner(pipeline.settings, pipeline.db) as bulk:
        report = bulk.provision([TenantItem.model_validate(i) for i in items]).as_json()
    tenants = [(t["tenant"], t["result"], t["reason"]) for t in report["tenants"]]
    assert tenants == [
        ("old", "exists", None),
        ("admin", "refused", "reserved_id"),
        ("clash", "refused", "queue_mismatch"),
        ("fresh", "created", None),
        ("fresh", "refused", "duplicate"),
        ("last", "created", None),  # after a channel error, on a new channel
        ("bare", "exists", None),
    ]
    devices = [(d["device"], d["result"], d["reason"]) for d in report["devices"]]
    assert devices == [
        ("old-new", "created", None),
        ("admin-d", "refused", "tenant_refused"),
        ("clash-d", "refused", "tenant_refused"),
        ("taken", "refused", "exists"),
        ("fresh-d", "created", None),
        ("fresh-d", "refused", "duplicate"),
        ("guest", "refused", "reserved_id"),
        ("last-d", "created", None),
        ("bare-d", "created", None),  # registered; its binding refused, said in message
    ]
    assert "not bound" in report["devices"][-1]["message"]
    assert report["devices"][-1]["password"]
    assert all(d["message"] for d in report["devices"] if d["result"] == "refused")
    assert (registry.tenant_document(pipeline.db, "old") or {})["weight"] == 2  # left as it is
    assert registry.tenant_document(pipeline.db, "clash") is None
    assert (registry.device_document(pipeline.db, "taken") or {})["tenant"] == "other"
    bound = bindings(pipeline)
    assert ("telemetry", "ingest.old", "old-new.*") in bound
    assert ("telemetry", "ingest.last", "last-d.*") in bound
    assert not any(key.startswith(("clash-d", "guest", "admin-d")) for _, _, key in bound)


@pytest.mark.settings(provision_batch_max=3)
def test_the_batch_bound(pipeline: Pipeline, tmp_path: Path) -> None:
    post = operator_api(pipeline)
    answer = post("/api/tenants/bulk", {"tenants": batch("a", 4, devices=0)})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "bad_parameter"
    assert "FAIRWAY_PROVISION_BATCH_MAX" in answer.get_json()["message"]
    answer = post("/api/tenants/bulk", {"tenants": batch("a", 2, devices=2)})  # 4 devices
    assert answer.status_code == 400 and "4" in answer.get_json()["message"]
    assert pipeline.db[mongo.TENANTS].count_documents({}) == 0

    # The command splits a longer file into batches and tells how far it got.
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"tenants": batch("c", 7, devices=1)}))
    env = pipeline.settings.environ()
    result = CliRunner().invoke(cli, ["tenant", "create-many", str(path)], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["counts"]["tenants"] == {"created": 7, "exists": 0, "refused": 0}
    assert out["counts"]["devices"]["created"] == 7
    progress = [line for line in result.stderr.splitlines() if " tenants (" in line]
    assert [line.split()[0] for line in progress] == ["3/7", "6/7", "7/7"]
    again = CliRunner().invoke(cli, ["tenant", "create-many", str(path)], env=env)
    assert json.loads(again.stdout)["counts"]["tenants"]["exists"] == 7

    path.write_text(json.dumps({"tenants": [{"tenant": "Bad Id"}]}))
    bad = CliRunner().invoke(cli, ["tenant", "create-many", str(path)], env=env)
    assert bad.exit_code == 1 and "tenants.0.tenant" in bad.stderr


@pytest.mark.settings(provision_batch_max=4)
def test_a_tenant_admin_registers_many_devices_of_its_own_tenant(pipeline: Pipeline) -> None:
    pipeline.tenant("a")
    pipeline.tenant("b")
    pipeline.device("b", "b-taken")
    pipeline.device("a", "a-old")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    tokens = {}
    for user, role, tenant in (
        ("adm", accounts.ADMIN, "a"),
        ("view", accounts.VIEWER, "a"),
        ("op", accounts.OPERATOR, None),
    ):
        accounts.create_user(pipeline.db, user, "correct horse battery", role, tenant)
        tokens[user] = accounts.create_api_token(pipeline.db, user, 3600)
    client = app.test_client()

    def post(user: str, body: Any) -> Any:
        headers = {"Authorization": f"Bearer {tokens[user]}"}
        return client.post("/api/devices/bulk", json=body, headers=headers)

    body = {"devices": ["a-new", "a-old", "b-taken", "a-new"]}
    assert post("view", body).status_code == 403
    assert post("adm", {**body, "tenant": "b"}).status_code == 404  # another tenant's
    assert post("op", body).get_json()["error"] == "bad_parameter"  # operators name it
    assert post("op", {**body, "tenant": "nope"}).status_code == 404
    assert post("adm", {"devices": [f"x{i}" for i in range(5)]}).status_code == 400  # bound

    answer = post("adm", body)
    assert answer.status_code == 200, answer.get_json()
    report = answer.get_json()
    assert [(d["device"], d["result"], d["reason"]) for d in report["devices"]] == [
        ("a-new", "created", None),
        ("a-old", "exists", None),
        ("b-taken", "refused", "exists"),
        ("a-new", "refused", "duplicate"),
    ]
    assert report["counts"] == {"created": 1, "exists": 1, "refused": 2}
    assert report["devices"][0]["password"] and report["devices"][0]["username"] == "a-new"
    assert ("telemetry", "ingest.a", "a-new.*") in bindings(pipeline)
    assert (registry.device_document(pipeline.db, "b-taken") or {})["tenant"] == "b"
    assert pipeline.db[mongo.TENANTS].count_documents({}) == 2  # no tenant made on the way


def test_refusals_on_every_declaring_channel_leave_the_others_made(pipeline: Pipeline) -> None:
    """A batch's declarations are spread over several channels, a chunk each: a queue the
    broker refuses on any of them is that tenant's refusal only."""
    items = batch("mc", 3 * PIPELINE_CHUNK + 50)
    clashes = {5, PIPELINE_CHUNK + 50, 3 * PIPELINE_CHUNK + 40}  # channels 0, 1 and 3
    with pipeline.channel() as channel:
        for i in clashes:
            channel.queue_declare(f"tenant.mc{i:04d}", durable=True, arguments={"x-max-length": 7})
    assert CHANNELS >= 4
    with BulkProvisioner(pipeline.settings, pipeline.db) as bulk:
        report = bulk.provision([TenantItem.model_validate(i) for i in items]).as_json()
    refused = {i for i, t in enumerate(report["tenants"]) if t["result"] == "refused"}
    assert refused == clashes
    assert {report["tenants"][i]["reason"] for i in clashes} == {"queue_mismatch"}
    assert report["counts"]["tenants"]["created"] == len(items) - len(clashes)
    assert report["counts"]["devices"] == {"created": len(items) - 3, "exists": 0, "refused": 3}
    bound = bindings(pipeline)
    for i, item in enumerate(items):
        name = item["tenant"]
        made = ("telemetry", f"ingest.{name}", f"{name}-d0.*") in bound
        assert made == (i not in clashes), name
        assert (("tenants", f"tenant.{name}", name) in bound) == (i not in clashes), name
