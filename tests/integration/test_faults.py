"""Crashes and outages mid-run: MongoDB must hold every accepted message exactly once.

Sizes and durations follow the issue (50k messages, a 30 s database outage) and can
be shortened locally with FAIRWAY_TEST_FAULT_MESSAGES / FAIRWAY_TEST_DB_OUTAGE_S.

Every run goes through bundles (the relay's default: up to 50 readings per tenant-queue
message, 5 ms linger), so each crash hits bundles open in the relay, bundles published
and not yet confirmed, bundles buffered or being written in the scheduler.
``test_kill_9_with_bundles_of_device_batches_and_single_readings`` makes that explicit:
a longer linger, device batches and single readings mixed, and a check with the broker
that tenant queues carried bundles, not a message per reading.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

import pytest

from fairway.devtools.simulator import Simulator, Summary, device_ids, tenant_ids, weighted_devices
from fairway.kernel import topology
from fairway.kernel.contract import split_reading_id
from tests.harness import (
    Pipeline,
    duplicate_readings,
    management,
    services,
    stored_readings,
    wait_for,
)
from tests.integration.queue_types import BOTH, CLASSIC, QUORUM

pytestmark = pytest.mark.faults

MESSAGES = int(os.environ.get("FAIRWAY_TEST_FAULT_MESSAGES", "50000"))
OUTAGE_S = float(os.environ.get("FAIRWAY_TEST_DB_OUTAGE_S", "30"))
QUORUM_MESSAGES = int(os.environ.get("FAIRWAY_TEST_QUORUM_MESSAGES", "15000"))


@dataclass(frozen=True)
class Run:
    """The shape of a crash or drain run on one queue type (quorum queues are slower)."""

    messages: int
    tenants: int
    devices: int
    rate: float
    roles: tuple[str, ...]  # killed (or stopped) and restarted, in this order
    seed: int = 0
    up_s: tuple[float, float] = (0.0, 0.0)  # random time before each kill
    down_s: tuple[float, float] = (0.0, 0.0)  # random time dead before the restart


KILL_RUNS = {
    CLASSIC: Run(
        MESSAGES, 5, 10, 5000, ("scheduler", "relay", "scheduler", "relay"), 20261124,
        (0.5, 2.0), (0.0, 1.0),
    ),
    QUORUM: Run(
        QUORUM_MESSAGES, 4, 5, 4000, ("scheduler", "relay", "scheduler"), 20261125,
        (0.5, 1.5), (0.0, 0.5),
    ),
}  # fmt: skip
# Twice, SIGTERM then restart these roles (classic: both, so the relay drains too).
DRAIN_RUNS = {
    CLASSIC: Run(MESSAGES // 5, 5, 10, 5000, ("scheduler", "relay")),
    QUORUM: Run(QUORUM_MESSAGES, 4, 5, 4000, ("scheduler",)),
}


def _provision(pipeline: Pipeline, tenants: int = 5, devices: int = 10) -> dict[str, list[str]]:
    by_tenant = {t: device_ids(t, devices) for t in tenant_ids(tenants)}
    for tenant, ids in by_tenant.items():
        pipeline.tenant(tenant)
        for device in ids:
            pipeline.device(tenant, device)
    return by_tenant


class Publisher(threading.Thread):
    """The simulator on a thread (it has its own pika I/O loop)."""

    def __init__(
        self,
        pipeline: Pipeline,
        by_tenant: dict[str, list[str]],
        total: int,
        rate: float,
        batch: int = 1,
    ):
        super().__init__(daemon=True)
        self.batch = batch
        self.simulator = Simulator(
            pipeline.settings,
            weighted_devices(by_tenant, {}),
            rate=rate,
            total=total,
            progress=False,
            batch=batch,
        )
        self.summary: Summary | None = None

    def run(self) -> None:
        self.summary = self.simulator.run()

    def expected_ids(self) -> set[str]:
        """Message ids of every reading sent (a batch's: ``<message id>#<index>``)."""
        assert self.summary is not None
        messages = [f"{self.simulator.run_id}-{n}" for n in range(1, self.summary.sent + 1)]
        if self.batch == 1:
            return set(messages)
        return {f"{m}#{i}" for m in messages for i in range(self.batch)}


def _assert_exactly_once(pipeline: Pipeline, publishers: list[Publisher]) -> None:
    expected: set[str] = set()
    for publisher in publishers:
        if publisher.ident is not None:  # started as a thread, not run inline
            publisher.join(timeout=300)
        assert publisher.summary is not None, "publisher did not finish"
        assert publisher.summary.nacked == 0
        assert publisher.summary.confirmed == publisher.summary.sent
        expected |= publisher.expected_ids()
    # Readings, not documents: a device batch's are one document per batch and hour.
    pipeline.wait_stored(len(expected), timeout=300)
    # Once each across both layouts: a reading in a batch document and in one of its own
    # is a duplicate.
    assert duplicate_readings(pipeline.db) == {}
    stored = {split_reading_id(d["_id"])[2] for d in stored_readings(pipeline.db, None, {"_id": 1})}
    assert stored == expected
    assert pipeline.depth(topology.REJECTED) == 0


def _start_run(pipeline: Pipeline, run: Run) -> tuple[dict[str, list[str]], Publisher]:
    """Provision ``run``'s devices, start relay and scheduler, publish on a thread."""
    by_tenant = _provision(pipeline, run.tenants, run.devices)
    pipeline.start("relay")
    pipeline.start("scheduler")
    publisher = Publisher(pipeline, by_tenant, run.messages, rate=run.rate)
    publisher.start()
    return by_tenant, publisher


@BOTH
def test_kill_9_scheduler_and_relay_at_random_points(pipeline: Pipeline, queue_type: str) -> None:
    run = KILL_RUNS[queue_type]
    _by_tenant, publisher = _start_run(pipeline, run)
    rng = random.Random(run.seed)
    for role in run.roles:
        time.sleep(rng.uniform(*run.up_s))  # a random point of the run: time must pass
        pipeline.kill(role)
        time.sleep(rng.uniform(*run.down_s))
        pipeline.start(role)
    _assert_exactly_once(pipeline, [publisher])
    assert pipeline.stop("relay") == 0
    assert pipeline.stop("scheduler") == 0


# A linger long enough that kills find bundles open in the relay, not only unconfirmed.
BUNDLED = {"bundle_linger_ms": 20.0, "bundle_max_readings": 50}


def _tenant_publishes(pipeline: Pipeline) -> int:
    queues = management("GET", f"queues/{pipeline.name}?columns=name,message_stats")
    return sum(
        q.get("message_stats", {}).get("publish", 0)
        for q in queues
        if q["name"].startswith(topology.TENANT_QUEUE_PREFIX)
    )


def test_kill_9_with_bundles_of_device_batches_and_single_readings(pipeline: Pipeline) -> None:
    by_tenant = _provision(pipeline)
    pipeline.start("relay", **BUNDLED)
    pipeline.start("scheduler")
    singles = Publisher(pipeline, by_tenant, MESSAGES // 2, rate=3000)
    batches = Publisher(pipeline, by_tenant, MESSAGES // 2, rate=3000, batch=10)
    singles.start()
    batches.start()
    rng = random.Random(20261205)
    for role in ("relay", "scheduler", "relay", "scheduler", "relay"):
        time.sleep(rng.uniform(0.5, 2.0))
        pipeline.kill(role)
        time.sleep(rng.uniform(0.0, 1.0))
        pipeline.start(role, **(BUNDLED if role == "relay" else {}))
    _assert_exactly_once(pipeline, [singles, batches])
    readings = len(singles.expected_ids()) + len(batches.expected_ids())
    # Management statistics lag by a few seconds; redeliveries add publishes, bundles
    # divide them: far fewer tenant-queue messages than readings.
    wait_for(lambda: _tenant_publishes(pipeline) > 0, 30, "tenant queue statistics")
    assert _tenant_publishes(pipeline) < readings / 4
    assert pipeline.stop("relay") == 0
    assert pipeline.stop("scheduler") == 0


def _tenant_acks(pipeline: Pipeline) -> int:
    queues = management("GET", f"queues/{pipeline.name}?columns=name,message_stats")
    return sum(
        q.get("message_stats", {}).get("ack", 0)
        for q in queues
        if q["name"].startswith(topology.TENANT_QUEUE_PREFIX)
    )


def test_database_outage_means_no_acks_and_nothing_lost(pipeline: Pipeline) -> None:
    by_tenant = _provision(pipeline)
    pipeline.start("relay")
    pipeline.start("scheduler")
    publisher = Publisher(pipeline, by_tenant, MESSAGES // 5, rate=2000)
    publisher.start()
    wait_for(lambda: pipeline.stored() > 0, 30, "the first readings to be stored")
    services("stop-mongo")
    try:
        # Management statistics refresh every few seconds: compare two readings taken
        # well inside the outage, after writes in flight at the stop have settled.
        time.sleep(min(8.0, OUTAGE_S / 3))
        acks_early = _tenant_acks(pipeline)
        time.sleep(max(0.0, OUTAGE_S - min(8.0, OUTAGE_S / 3)))
        acks_late = _tenant_acks(pipeline)
        assert acks_late == acks_early, "the scheduler acked while the database was down"
        assert pipeline.alive("relay") and pipeline.alive("scheduler")
    finally:
        services("start-mongo")
    _assert_exactly_once(pipeline, [publisher])


def test_rabbitmq_restart_mid_run_every_process_reconnects(pipeline: Pipeline) -> None:
    by_tenant = _provision(pipeline)
    pipeline.start("relay")
    pipeline.start("scheduler")
    first = Publisher(pipeline, by_tenant, MESSAGES // 2, rate=20000)
    first.run()  # all confirmed: durable in ingest or beyond
    services("restart-rabbitmq")
    second = Publisher(pipeline, by_tenant, MESSAGES // 10, rate=5000)
    second.run()
    assert pipeline.alive("relay") and pipeline.alive("scheduler")
    _assert_exactly_once(pipeline, [first, second])
    wait_for(lambda: pipeline.depth(topology.INGEST) == 0, 60, "ingest to drain")


def _mid_run(pipeline: Pipeline, publisher: Publisher) -> bool:
    """The scheduler has had its first gauge tick (so shares were re-shared) and is
    writing, or there is nothing left to write."""
    ticked = pipeline.metric("scheduler", "fairway_scheduler_prefetch", tenant="sim01") > 0
    stored = pipeline.procs["scheduler"].metric_sum("fairway_scheduler_stored_total")
    return ticked and (stored >= 500 or not publisher.is_alive())


@BOTH
def test_sigterm_mid_run_drains_so_the_restart_sees_no_duplicates(
    pipeline: Pipeline, queue_type: str
) -> None:
    run = DRAIN_RUNS[queue_type]
    by_tenant, publisher = _start_run(pipeline, run)
    for _ in range(2):
        wait_for(lambda: _mid_run(pipeline, publisher), 30, "the scheduler to be mid-run")
        for role in run.roles:
            assert pipeline.stop(role) == 0  # SIGTERM: flush, ack, exit
        for role in reversed(run.roles):
            pipeline.start(role)
    _assert_exactly_once(pipeline, [publisher])
    # A clean drain acks everything it wrote, so nothing came back as a duplicate.
    assert pipeline.metric("scheduler", "fairway_scheduler_duplicates_total", tenant="sim01") == 0
    assert (
        sum(
            pipeline.metric("scheduler", "fairway_scheduler_duplicates_total", tenant=t)
            for t in by_tenant
        )
        == 0
    )
    assert pipeline.stop("relay") == 0
    assert pipeline.stop("scheduler") == 0
