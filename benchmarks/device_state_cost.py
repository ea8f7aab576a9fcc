"""Server CPU per device-state write on FerretDB: today's upserts against insert-only logs.

    python -m benchmarks.device_state_cost [--devices 2500] [--flushes 4] [--rounds 2]

Issue 12's fleet write cost is ``device_state``: one upsert per dirty device per flush.
This measures, on a private FerretDB (``benchmarks.write_cost``'s), what each way of
writing the same flushes costs in server CPU (FerretDB + its PostgreSQL backends, from
``/proc``) per device written, and what a read of a tenant's state then costs:

* ``upsert``: today's :func:`fairway.storage.device_state.apply` (ordered bulks of 25
  ``$min``/``$max`` upserts);
* ``upsert_single``: the same upserts one command each (what a bulk saves);
* ``log_device``: insert-only, one small document per dirty device per flush
  (``insert_many``), GIN on ``device`` and ``tenant``;
* ``log_tenant``: insert-only, one document per tenant per flush holding every dirty
  device's delta in an array, GIN on ``tenant`` and ``devices``;
* ``log_snapshot``: ``log_tenant``'s writes, compacted without any update: per tenant the
  log folded into one new snapshot document (inserted), the folded documents deleted.

``--dirty`` is the share of the fleet dirty in a flush (1.0: ``write_cost``'s compressed
fleet, where every device reported since the last flush; a real sparse fleet reporting
every 5 minutes with a 2 s flush is ~0.007). Reads: a tenant's state after the flushes
(base documents for ``upsert``; every log document of the tenant for the logs), and
the compaction a log needs (read the log, fold, one upsert per device, delete the log;
or ``log_snapshot``'s), and a tenant read after it. ``--prefill``: every device has its
state before the timed flushes (steady state: a snapshot compaction then rewrites the
whole tenant, an upsert updates an existing document).
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from benchmarks.common import emit, meta, parser, r, say
from benchmarks.write_cost import PrivateServer, private_server
from fairway.storage import device_state, mongo
from fairway.storage.device_state import DeviceDelta

NAME = "device_state_cost"
LOG = "device_state_log"
TENANTS = 10


def _delta(tenant: str, ts: datetime, step: int) -> DeviceDelta:
    entry = {"ts": ts, "id": f"m{step}", "values": {"temp": 20.5 + step % 7, "hum": 41}}
    other = {"ts": ts, "id": f"n{step}", "values": {"watts": 100.0 + step, "volts": 230.1}}
    return DeviceDelta(tenant, ts, ts, {"env": entry, "power": other})


def flushes(devices: int, count: int, dirty: float, seed: int) -> list[dict[str, DeviceDelta]]:
    rng = random.Random(seed)
    ids = [(f"t{i % TENANTS:02d}", f"t{i % TENANTS:02d}-d{i:05d}") for i in range(devices)]
    start = datetime.now(UTC).replace(microsecond=0)
    out = []
    for n in range(count):
        chosen = ids if dirty >= 1 else rng.sample(ids, max(1, round(devices * dirty)))
        ts = start + timedelta(seconds=2 * n)
        out.append({d: _delta(t, ts, n) for t, d in chosen})
    return out


def _entry(device: str, delta: DeviceDelta) -> dict[str, Any]:
    return {"d": device, "f": delta.first_ts, "l": delta.last_ts, "latest": delta.latest}


def write_upsert(db: Database, batch: dict[str, DeviceDelta], writer: str, seq: int) -> None:
    device_state.apply(db, batch)


def write_upsert_single(db: Database, batch: dict[str, DeviceDelta], writer: str, seq: int) -> None:
    for device, delta in batch.items():
        op = device_state.update_of(device, delta)
        db[mongo.DEVICE_STATE].update_one(op._filter, op._doc, upsert=True)


def write_log_device(db: Database, batch: dict[str, DeviceDelta], writer: str, seq: int) -> None:
    docs = [
        {"_id": f"{d}:{writer}:{seq}", "device": d, "tenant": delta.tenant, **_entry(d, delta)}
        for d, delta in batch.items()
    ]
    db[LOG].insert_many(docs, ordered=False)


def write_log_tenant(db: Database, batch: dict[str, DeviceDelta], writer: str, seq: int) -> None:
    per: dict[str, list[dict[str, Any]]] = {}
    for d, delta in batch.items():
        per.setdefault(delta.tenant, []).append(_entry(d, delta))
    docs = [
        {"_id": f"{t}:{writer}:{seq}", "tenant": t, "devices": [e["d"] for e in es], "s": es}
        for t, es in per.items()
    ]
    db[LOG].insert_many(docs, ordered=False)


WRITERS = {
    "upsert": write_upsert,
    "upsert_single": write_upsert_single,
    "log_device": write_log_device,
    "log_tenant": write_log_tenant,
    "log_snapshot": write_log_tenant,
}


def read_tenant(db: Database, how: str, tenant: str) -> int:
    if how.startswith("upsert"):
        return len(device_state.of_tenant(db, tenant))
    deltas: dict[str, DeviceDelta] = {}
    for doc in db[LOG].find({"tenant": tenant}):
        for e in [doc] if how == "log_device" else doc["s"]:
            delta = DeviceDelta(tenant, e["f"], e["l"], e["latest"])
            known = deltas.get(e["d"])
            if known is None:
                deltas[e["d"]] = delta
            else:
                known.merge(delta)
    return len(deltas)


def _fold_entries(docs: Iterable[dict[str, Any]], whole: bool = False) -> dict[str, DeviceDelta]:
    """Per device, the merged deltas of log documents (``whole``: each document is one
    entry, ``log_device``'s; else each holds its entries in ``s``)."""
    deltas: dict[str, DeviceDelta] = {}
    for doc in docs:
        for e in [doc] if whole else doc["s"]:
            delta = DeviceDelta(doc["tenant"], e["f"], e["l"], e["latest"])
            known = deltas.get(e["d"])
            if known is None:
                deltas[e["d"]] = delta
            else:
                known.merge(delta)
    return deltas


def compact_snapshot(db: Database) -> None:
    """Per tenant: fold its log (snapshots are log documents too) into one new snapshot
    document, insert it, delete what it folded: no per-device update at all."""
    for t in range(TENANTS):
        tenant = f"t{t:02d}"
        docs = list(db[LOG].find({"tenant": tenant}))
        if not docs:
            continue
        deltas = _fold_entries(docs)
        entries = [_entry(d, delta) for d, delta in deltas.items()]
        db[LOG].insert_one(
            {
                "_id": f"{tenant}:snap:{uuid.uuid4().hex[:8]}",
                "tenant": tenant,
                "devices": list(deltas),
                "s": entries,
            }
        )
        db[LOG].delete_many({"tenant": tenant, "_id": {"$in": [d["_id"] for d in docs]}})


def compact(db: Database, how: str) -> None:
    """Fold the whole log into the base documents (one upsert per device), delete it."""
    if how == "log_snapshot":
        compact_snapshot(db)
        return
    docs = list(db[LOG].find({}))
    ids = [doc["_id"] for doc in docs]
    device_state.apply(db, _fold_entries(docs, whole=how == "log_device"))
    for start in range(0, len(ids), 500):
        db[LOG].delete_many({"_id": {"$in": ids[start : start + 500]}})


def run_one(
    client: MongoClient,
    server: PrivateServer,
    how: str,
    plan: list[dict[str, DeviceDelta]],
    prefill: dict[str, DeviceDelta] | None = None,
) -> dict[str, Any]:
    db = client[f"dsc-{how}-{uuid.uuid4().hex[:8]}"]
    try:
        mongo.ensure_indexes(db, server.private_url)
        if prefill is not None:  # steady state: every device has its state already
            WRITERS[how](db, prefill, "w0", 0)
            if not how.startswith("upsert"):
                compact(db, how)
        written = sum(len(b) for b in plan)
        s0, c0, w0 = server.snapshot(), time.process_time(), time.perf_counter()
        for seq, batch in enumerate(plan):
            WRITERS[how](db, batch, "w1", seq)
        wall = time.perf_counter() - w0
        server_s, client_s = server.since(s0), time.process_time() - c0
        s0, c0 = server.snapshot(), time.process_time()
        for t in range(TENANTS):
            read_tenant(db, how, f"t{t:02d}")
        read_s = (server.since(s0) + time.process_time() - c0) / TENANTS
        found: dict[str, Any] = {
            "device_writes": written,
            "write_wall_s": r(wall, 2),
            "server_us_per_device_write": r(server_s / written * 1e6),
            "client_us_per_device_write": r(client_s / written * 1e6),
            "tenant_read_cpu_ms": r(read_s * 1e3, 2),
        }
        if not how.startswith("upsert"):
            s0, c0 = server.snapshot(), time.process_time()
            compact(db, how)
            comp_s = server.since(s0) + time.process_time() - c0
            found["compaction_ms"] = r(comp_s * 1e3)
            found["compaction_us_per_device_write"] = r(comp_s / written * 1e6)
            s0, c0 = server.snapshot(), time.process_time()
            for t in range(TENANTS):
                read_tenant(db, "log_tenant" if how == "log_snapshot" else how, f"t{t:02d}")
            after = (server.since(s0) + time.process_time() - c0) / TENANTS
            found["tenant_read_after_compaction_cpu_ms"] = r(after * 1e3, 2)
        say(f"  {how}: {found}")
        return found
    finally:
        client.drop_database(db.name)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2500)
    p.add_argument("--flushes", type=int, default=4)
    p.add_argument("--dirty", type=float, default=1.0, help="share of devices per flush")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default=",".join(WRITERS))
    p.add_argument(
        "--prefill",
        action="store_true",
        help="first (untimed) give every device its state: compactions then fold into it",
    )
    args = p.parse_args()
    mongo.EQUALITY_FIELDS[LOG] = ("_id", "tenant", "device", "devices")
    hows = args.only.split(",")
    rounds: list[dict[str, Any]] = []
    with private_server(os.environ["FAIRWAY_POSTGRES_URL"]) as server:
        client: MongoClient = MongoClient(server.mongo_url, tz_aware=True)
        with client:
            for n in range(args.rounds):
                plan = flushes(args.devices, args.flushes, args.dirty, n)
                full = flushes(args.devices, 1, 1.0, n)[0] if args.prefill else None
                order = hows if n % 2 == 0 else hows[::-1]
                found: dict[str, Any] = {h: run_one(client, server, h, plan, full) for h in order}
                found["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                rounds.append(found)
    medians = {
        how: {
            key: r(statistics.median(rd[how][key] for rd in rounds))
            for key in rounds[0][how]
            if key != "device_writes"
        }
        for how in hows
    }
    # The question asked: would an insert-only log, compaction included, cost at most
    # half of today's upserts per device write (worth building)?
    targets: dict[str, dict[str, Any]] = {}
    base = medians.get("upsert", {}).get("server_us_per_device_write")
    for how in hows:
        if how.startswith("upsert") or not base:
            continue
        cost = medians[how]["server_us_per_device_write"] + medians[how].get(
            "compaction_us_per_device_write", 0.0
        )
        ratio = r(cost / base, 3)
        targets[f"{how}_with_compaction_vs_upsert"] = {"value": ratio, "met": ratio <= 0.5}
    emit(
        {
            "meta": meta(NAME, 1.0, devices=args.devices, flushes=args.flushes, dirty=args.dirty),
            "rounds": rounds,
            "medians": medians,
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
