"""The scheduler's channel pool and versioned tenant list, on the real broker (issue 17).

Tenants share channels (``FAIRWAY_SCHEDULER_CHANNELS``), so delivery tags of different
tenants interleave on one channel: an ack for one tenant's written messages must never
cover another tenant's unwritten one. Tenants created and weights changed while the
scheduler runs are read from the registry's revisions, without a restart.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pika
import pytest

from fairway.kernel import topology
from fairway.kernel.contract import Reading, bundle_body, bundle_head, bundle_part, tenant_message
from fairway.storage import registry
from scheduler.service import RegistryTenants, Scheduler
from scheduler.sink import WriteOutcome
from tests.harness import Pipeline, wait_for
from tests.integration.queue_types import BOTH


def _fill(
    pipeline: Pipeline, tenant: str, count: int, prefix: str | None = None, bundle: int = 1
) -> None:
    """Put ``count`` relay-shaped messages straight into ``tenant.<id>`` (confirmed):
    single readings (the format before bundles), or bundles of ``bundle`` readings."""
    now, batch = time.time(), prefix or uuid.uuid4().hex[:8]
    head = bundle_head(tenant)
    with pipeline.channel() as channel:
        channel.confirm_delivery()
        for i in range(count):
            readings = [
                Reading(f"{tenant}-1", "env", f"{batch}-{i}-{j}", now, {}) for j in range(bundle)
            ]
            if bundle == 1:
                channel.basic_publish(
                    topology.TENANTS, tenant, tenant_message(tenant, readings[0], now)
                )
                continue
            body = bundle_body(head, [bundle_part(r, now) for r in readings])
            headers = {topology.READINGS_HEADER: bundle}
            props = pika.BasicProperties(headers=headers)
            channel.basic_publish(topology.TENANTS, tenant, body, props)


class HoldingSink:
    """Writes everything except messages whose body contains ``held`` (while ``holding``):
    those fail as if the database were down, so their writer retries them."""

    def __init__(self, held: bytes) -> None:
        self.held = held
        self.holding = threading.Event()
        self.holding.set()
        self.written: list[bytes] = []

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        if self.holding.is_set() and any(self.held in body for body in bodies):
            raise ConnectionError("held by the test")
        self.written.extend(bodies)
        outcome = WriteOutcome.of(len(bodies))  # one reading per message here
        outcome.stored_each = [1] * len(bodies)
        outcome.stored = len(bodies)
        return outcome

    def close(self) -> None:
        """Nothing to flush."""


@BOTH
@pytest.mark.settings(scheduler_channels=1, batch_size=1, batch_max=1, writers=2, batch_linger_ms=0)
def test_an_ack_on_a_shared_channel_never_covers_another_tenants_unwritten_message(
    pipeline: Pipeline, queue_type: str
) -> None:
    pipeline.tenant("slow")
    pipeline.tenant("fast")
    sink = HoldingSink(b"slow-held")
    scheduler = Scheduler(pipeline.settings, sink, RegistryTenants(pipeline.db))
    scheduler.drain_timeout_s = 2.0
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        consumers = scheduler.pool.consumers
        wait_for(
            lambda: all(t in consumers and consumers[t].consumer_tag for t in ("slow", "fast")),
            30,
            "both tenants consumed",
        )
        assert consumers["slow"].slot == consumers["fast"].slot == 0  # one shared channel
        # slow's message gets the lower delivery tag and is never written ...
        _fill(pipeline, "slow", 1, prefix="slow-held")
        wait_for(lambda: consumers["slow"].unacked == 1, 30, "slow's delivery")
        # ... while fast's 60 messages, delivered after it on the same channel, are.
        _fill(pipeline, "fast", 60)
        wait_for(lambda: len(sink.written) == 60, 30, "fast's messages written")
        wait_for(lambda: consumers["fast"].unacked < 25, 10, "fast's acks")
        fast_unacked = consumers["fast"].unacked
    finally:
        scheduler.stop()  # slow's write never ends: the drain expires, the channel closes
        thread.join(30)
    assert not thread.is_alive()
    # The broker requeued exactly what was not acked: slow's unwritten message (no ack
    # covered it) and the fast messages that waited behind it (fewer than a quarter of
    # fast's prefetch: the rest were acked one by one).
    slow_queue, fast_queue = (topology.tenant_queue_name(t) for t in ("slow", "fast"))
    wait_for(lambda: pipeline.depth(slow_queue) == 1, 30, "slow's message requeued")
    assert pipeline.depth(fast_queue) == fast_unacked < 25


@pytest.mark.settings(
    scheduler_channels=2,
    scheduler_buffer=1000,
    scheduler_prefetch=20,
    batch_size=50,
    batch_max=50,
    writers=1,
    drr_quantum=10,
)
def test_a_new_tenant_is_consumed_and_a_weight_change_applies_without_restart(
    pipeline: Pipeline,
) -> None:
    for tenant in ("a", "b", "c"):
        pipeline.tenant(tenant)
    pipeline.start("scheduler")

    def stored(tenant: str) -> float:
        return pipeline.metric("scheduler", "fairway_scheduler_stored_total", tenant=tenant)

    wait_for(
        lambda: pipeline.metric("scheduler", "fairway_scheduler_tenants") == 3, 30, "3 tenants"
    )
    # A tenant created while the scheduler runs: consumed within the refresh time.
    pipeline.tenant("late")
    _fill(pipeline, "late", 10)
    wait_for(lambda: stored("late") == 10, 10, "the late tenant's messages stored")
    assert pipeline.metric("scheduler", "fairway_scheduler_tenant_reads_total", kind="changes") >= 1
    assert pipeline.metric("scheduler", "fairway_scheduler_channels") == 2

    # Two backlogged tenants at weight 1 (filled while the scheduler is paused), in
    # bundles of different sizes: the DRR charges readings, not messages ...
    scheduler = pipeline.procs["scheduler"].proc
    scheduler.send_signal(signal.SIGSTOP)
    try:
        _fill(pipeline, "a", 4_000, bundle=10)
        _fill(pipeline, "b", 8_000, bundle=5)
    finally:
        scheduler.send_signal(signal.SIGCONT)

    def prefetch(tenant: str) -> float:
        return pipeline.metric("scheduler", "fairway_scheduler_prefetch", tenant=tenant)

    def window(count: int) -> float:
        a0, b0 = stored("a"), stored("b")
        wait_for(lambda: stored("a") + stored("b") - a0 - b0 >= count, 60, "a window")
        ratio = (stored("b") - b0) / max(1.0, stored("a") - a0)
        for tenant in ("a", "b"):  # both still backlogged: the window measured the DRR
            assert pipeline.depth(topology.tenant_queue_name(tenant)) > 0, f"{tenant} ran dry"
        return ratio

    wait_for(lambda: stored("a") >= 2000, 30, "a to be served")
    before = window(10_000)
    assert 0.7 <= before <= 1.4, f"b:a served {before:.2f} at equal weights"
    # ... then b's weight goes to 3 in the registry: served 3:1 without a restart, once
    # the next refresh (0.5 s here) re-shared the prefetch 3:1 (1000 x 3/4, 1000 x 1/4).
    registry.set_tenant_weight(pipeline.db, "b", 3)
    wait_for(lambda: (prefetch("a"), prefetch("b")) == (250, 750), 10, "the prefetch re-shared")
    after = window(10_000)
    assert 2.4 <= after <= 3.6, f"b:a served {after:.2f} at weights 3:1"
    assert pipeline.alive("scheduler")
    assert pipeline.stop("scheduler") == 0


@pytest.mark.settings(scheduler_channels=2)
def test_tenants_beyond_the_connections_channel_max_are_all_consumed(
    pipeline: Pipeline,
) -> None:
    """Each tenant queue is declared on a throwaway channel: 150 tenants on a connection
    of 40 channels (``channel_max`` in the URL; RabbitMQ's default is 2,047, which 10,000
    tenants on 16 pooled channels exceeded at start) are still all declared and consumed."""
    from fairway.provision_bulk import TenantItem, provision_many

    tenants = [f"cm{i:03d}" for i in range(150)]
    provision_many(
        pipeline.settings, pipeline.db, [TenantItem(tenant=t, max_backlog=None) for t in tenants]
    )
    pipeline.start("scheduler", amqp_url=f"{pipeline.settings.amqp_url}?channel_max=40")

    def consumed() -> int:
        with pipeline.channel() as channel:
            return sum(
                channel.queue_declare(
                    topology.tenant_queue_name(t), passive=True
                ).method.consumer_count
                > 0
                for t in tenants
            )

    wait_for(lambda: consumed() == len(tenants), 60, "every tenant queue consumed", 1.0)
    for tenant in (tenants[0], tenants[-1]):
        _fill(pipeline, tenant, 5)
    wait_for(
        lambda: all(
            pipeline.metric("scheduler", "fairway_scheduler_stored_total", tenant=t) == 5
            for t in (tenants[0], tenants[-1])
        ),
        30,
        "readings of the first and last tenant stored",
    )
    assert pipeline.alive("scheduler")
    assert pipeline.stop("scheduler") == 0
