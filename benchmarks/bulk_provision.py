"""Bulk provisioning: 1,000 tenants (one device each) in batches vs one by one.

Each contender gets its own fresh vhost and database (:func:`common.bench_env`), so
neither finds the other's queues:

(a) ``single``: per tenant :func:`fairway.provision.provision_tenant` (a connection, the
    shared topology, the two queues, the record) then
    :func:`fairway.provision.register_device` (the record, a connection, the binding), as
    ``fairway tenant create`` and ``fairway device register`` do; the two parts are timed
    apart (``single.tenants_s`` is the issue's 129 s figure).
(b) ``bulk``: :func:`fairway.provision_bulk.provision_many` over the same items
    (``fairway tenant create-many``: batches of ``FAIRWAY_PROVISION_BATCH_MAX``, one
    connection), and once more without devices (``bulk_tenants_only``).
(c) ``bulk_rerun``: (b) again on the same vhost: everything exists.

Both contenders' vhosts must end with the same queues and bindings (checked). Targets:
bulk/single time ratio <= 0.1 and 1,000 tenants in <= 6 s (the issue's 10,000 in
<= 60 s, pro rata; 10,000 are not declared on the shared broker).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any

from benchmarks import common
from benchmarks.common import r, say
from fairway.provision import provision_tenant, register_device
from fairway.provision_bulk import TenantItem, provision_many
from tests.harness import Pipeline, management

NAME = "bulk_provision"
TARGET_RATIO = 0.1
TARGET_S_PER_1000 = 6.0


def items(count: int, devices: int) -> list[TenantItem]:
    """``bp0000`` ... with ``bp0000-d0`` ..."""
    return [
        TenantItem(tenant=f"bp{i:04d}", devices=[f"bp{i:04d}-d{j}" for j in range(devices)])
        for i in range(count)
    ]


def shape(env: Pipeline) -> tuple[int, int]:
    """(queues, bindings to queues) of the vhost."""
    vhost = urllib.parse.quote(env.name, safe="")
    queues = management("GET", f"queues/{vhost}?columns=name")
    bindings = [b for b in management("GET", f"bindings/{vhost}") if b["source"]]
    return len(queues), len(bindings)


def run_single(count: int) -> dict[str, Any]:
    with common.bench_env("bps") as env:
        tenants_s = devices_s = 0.0
        for item in items(count, 1):
            started = time.perf_counter()
            provision_tenant(env.settings, item.tenant, 1, env.settings.tenant_max_backlog)
            middle = time.perf_counter()
            register_device(env.settings, env.db, item.tenant, item.devices[0])
            tenants_s += middle - started
            devices_s += time.perf_counter() - middle
        return {
            "tenants_s": r(tenants_s, 2),
            "devices_s": r(devices_s, 2),
            "total_s": r(tenants_s + devices_s, 2),
            "shape": shape(env),
        }


def run_bulk(count: int, devices: int, rerun: bool = False) -> dict[str, Any]:
    with common.bench_env("bpb") as env:
        batch = items(count, devices)
        started = time.perf_counter()
        report = provision_many(env.settings, env.db, batch)
        out: dict[str, Any] = {"total_s": r(time.perf_counter() - started, 2)}
        out["counts"] = report.counts()
        if rerun:
            started = time.perf_counter()
            again = provision_many(env.settings, env.db, batch)
            out["rerun_s"] = r(time.perf_counter() - started, 2)
            out["rerun_counts"] = again.counts()
        out["shape"] = shape(env)
        return out


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    count = common.scaled(1000, args.scale, minimum=10)
    run_meta = common.meta(NAME, args.scale, tenants=count)
    say(f"bulk: {count} tenants, one device each")
    bulk = run_bulk(count, 1, rerun=True)
    say(f"bulk: {bulk['total_s']} s; tenants only")
    tenants_only = run_bulk(count, 0)
    say(f"bulk tenants only: {tenants_only['total_s']} s; now one by one")
    single = run_single(count)
    say(f"single: {single['total_s']} s")
    assert bulk["shape"] == single["shape"], (bulk["shape"], single["shape"])
    ratio = common.ratio(bulk["total_s"], single["total_s"])
    tenant_ratio = common.ratio(tenants_only["total_s"], single["tenants_s"])
    per_1000 = r(bulk["total_s"] * 1000 / count, 2)
    common.emit(
        {
            "meta": {**run_meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "single": single,
            "bulk": bulk,
            "bulk_tenants_only": tenants_only,
            "ratios": {
                "bulk/single (tenants and devices)": ratio,
                "bulk/single (tenants only)": tenant_ratio,
                "single/bulk speed-up": common.ratio(single["total_s"], bulk["total_s"], 1),
            },
            "targets": {
                f"bulk/single time ratio<={TARGET_RATIO:g}": {
                    "value": ratio,
                    "met": ratio is not None and ratio <= TARGET_RATIO,
                },
                f"bulk s per 1,000 tenants (with a device each)<={TARGET_S_PER_1000:g}": {
                    "value": per_1000,
                    "met": per_1000 <= TARGET_S_PER_1000,
                },
            },
        }
    )


if __name__ == "__main__":
    main()
