"""The scheduler's settling (scheduler/service.py) on stub channels and a fake collection.

A written batch settles its deliveries per tenant channel: the settled prefix is acked
with one ``multiple`` ack through the channel's AckWatermark; documents the database
refuses three times are nacked without requeue (dead-lettered); a database error
retries the whole batch and acks nothing until it is written.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect, BulkWriteError

import scheduler.service as scheduler_service
from fairway.domain.tenant_watch import TenantChanges
from fairway.kernel.contract import Reading, reading_id, tenant_message
from fairway.kernel.settings import Settings
from fairway.storage import mongo
from fairway.storage.device_state import DEVICE_STATE
from fairway.storage.registry import Tenant
from fairway.storage.rollups import ROLLUP_PENDING
from scheduler.service import Delivery, Scheduler
from scheduler.sink import MAX_DOCUMENT_ATTEMPTS, MongoSink, NullSink, Sink, WriteOutcome
from scheduler.tenant_channel import TenantConsumer, new_acks

REFUSED_CODE = 121  # document validation failure: not a duplicate


class StubChannel:
    def __init__(self) -> None:
        self.is_open = True
        self.acks: list[tuple[int, bool]] = []
        self.nacks: list[tuple[int, bool]] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))

    def basic_nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self.nacks.append((delivery_tag, requeue))


class FakeCollection:
    """``insert_many(ordered=False)`` that refuses or finds duplicates by ``_id``."""

    def __init__(self, refuse: set[str] = frozenset(), duplicate: set[str] = frozenset()) -> None:
        self.refuse, self.duplicate = set(refuse), set(duplicate)
        self.attempts: dict[str, int] = {}
        self.stored: list[str] = []

    def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> None:
        assert not ordered
        errors = []
        for i, doc in enumerate(docs):
            self.attempts[doc["_id"]] = self.attempts.get(doc["_id"], 0) + 1
            if doc["_id"] in self.refuse:
                errors.append({"index": i, "code": REFUSED_CODE})
            elif doc["_id"] in self.duplicate:
                errors.append({"index": i, "code": mongo.DUPLICATE_KEY})
            else:
                self.stored.append(doc["_id"])
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": []})

    def bulk_write(self, ops: list[Any], ordered: bool = True) -> None:
        """The sink's device_state and rollup_pending updates: accepted, not checked here."""

    def update_one(self, *args: Any, **kwargs: Any) -> Any:
        """The rollup writer's registration: accepted (as new), not checked here."""
        return SimpleNamespace(upserted_id="new")

    def insert_one(self, doc: dict[str, Any]) -> None:
        """The rollup writer's rollup_touched records: accepted, not checked here."""


def body(tenant: str, tag: int) -> bytes:
    reading = Reading("dev-1", "env", f"m{tag}", time.time(), {"t": tag})
    return tenant_message(tenant, reading, time.time())


def doc_id(tenant: str, tag: int) -> str:
    return reading_id(tenant, "dev-1", f"m{tag}")


def scheduler_with(sink: Sink) -> Scheduler:
    scheduler = Scheduler(Settings(), sink, list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    scheduler.stop_event.wait = lambda _delay=None: False  # type: ignore[method-assign]
    return scheduler


def tenant_channel(tenant: str) -> tuple[TenantConsumer, StubChannel]:
    channel = StubChannel()
    consumer = TenantConsumer(tenant, 100, queue=f"tenant.{tenant}", channel=channel)
    return consumer, channel


def received(consumer: TenantConsumer, *tags: int) -> list[tuple[str, Delivery]]:
    """Deliveries as the consumer got them, in a batch."""
    batch = []
    for tag in tags:
        consumer.delivered(tag, "c1")
        batch.append((consumer.tenant, Delivery(consumer, tag, body(consumer.tenant, tag), "c1")))
    return batch


def write(scheduler: Scheduler, batch: list[tuple[str, Delivery]]) -> None:
    """One writer's round trip, synchronously: write, then settle on the loop."""
    scheduler.inflight += 1
    scheduler._write(batch)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def stopped() -> Any:
    made: list[Scheduler] = []
    yield made
    for scheduler in made:
        scheduler.after_drain()


@pytest.fixture
def write_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every write takes ``write_time[0]`` seconds (1 ms unless set) by the scheduler's
    clock, which the write budget reads: a test of the budget must not depend on how
    fast the null sink ran (on a loaded machine a preemption or a garbage collection
    within a write made it "slow" and moved the limit)."""
    seconds, now = [0.001], [0.0]

    def perf_counter() -> float:  # called as a write starts and as it ends
        now[0] += seconds[0]
        return now[0]

    fake = SimpleNamespace(perf_counter=perf_counter, monotonic=time.monotonic)
    monkeypatch.setattr(scheduler_service, "time", fake)
    return seconds


def test_a_written_batch_is_acked_once_per_tenant_channel(stopped: list[Scheduler]) -> None:
    scheduler = scheduler_with(NullSink())
    stopped.append(scheduler)
    acme, acme_channel = tenant_channel("acme")
    beta, beta_channel = tenant_channel("beta")
    batch = received(acme, 1, 2, 3) + received(beta, 1, 2)
    before = sample("fairway_scheduler_stored_total", tenant="acme")
    write(scheduler, batch)
    assert acme_channel.acks == [(3, True)]
    assert beta_channel.acks == [(2, True)]
    assert sample("fairway_scheduler_stored_total", tenant="acme") - before == 3
    assert scheduler.inflight == 0


def test_tenants_sharing_a_channel_settle_a_batch_together(stopped: list[Scheduler]) -> None:
    """Interleaved tags of two tenants on one channel, all in one batch: one ``multiple``
    ack. Settled tenant by tenant, acme's tag 3 would wait behind beta's 2 (settled next)
    and, at acme's stuck limit (prefetch 4: 1), go out on its own first."""
    scheduler = scheduler_with(NullSink())
    stopped.append(scheduler)
    channel = StubChannel()
    acks = new_acks()
    acme = TenantConsumer("acme", 4, queue="tenant.acme", channel=channel, acks=acks)  # type: ignore[arg-type]
    beta = TenantConsumer("beta", 4, queue="tenant.beta", channel=channel, acks=acks)  # type: ignore[arg-type]
    a1, b2, a3, b4 = received(acme, 1) + received(beta, 2) + received(acme, 3) + received(beta, 4)
    write(scheduler, [a1, a3, b2, b4])  # DRR order: acme's turn, then beta's
    assert channel.acks == [(4, True)]
    assert acme.unacked == beta.unacked == 0
    assert acme.held["c1"] == beta.held["c1"] == 0


def test_only_the_written_prefix_is_acked(stopped: list[Scheduler]) -> None:
    scheduler = scheduler_with(NullSink())
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    first, second, third = received(acme, 1, 2, 3)
    write(scheduler, [first, third])  # parallel writers finish out of order
    assert channel.acks == [(1, True)]
    write(scheduler, [second])
    assert channel.acks == [(1, True), (3, True)]


def test_a_document_refused_three_times_is_dead_lettered(stopped: list[Scheduler]) -> None:
    collection = FakeCollection(refuse={doc_id("acme", 2)}, duplicate={doc_id("acme", 3)})
    scheduler = scheduler_with(
        MongoSink(
            {
                mongo.TELEMETRY: collection,
                DEVICE_STATE: collection,
                ROLLUP_PENDING: collection,
                mongo.ROLLUP_WRITERS: collection,
                mongo.ROLLUP_TOUCHED: collection,
            }
        )
    )  # type: ignore[arg-type]
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    dead_before = sample("fairway_scheduler_dead_lettered_total", tenant="acme")
    dup_before = sample("fairway_scheduler_duplicates_total", tenant="acme")
    write(scheduler, received(acme, 1, 2, 3))
    assert collection.attempts[doc_id("acme", 2)] == MAX_DOCUMENT_ATTEMPTS == 3
    assert channel.nacks == [(2, False)]  # without requeue: to the dead-letter exchange
    assert channel.acks == [(3, True)]  # stored, refused and duplicate are all settled
    assert sample("fairway_scheduler_dead_lettered_total", tenant="acme") - dead_before == 1
    assert sample("fairway_scheduler_duplicates_total", tenant="acme") - dup_before == 1


class FlakySink:
    """The database is down for the first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def write(self, bodies: list[bytes]) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise AutoReconnect("connection refused")
        return NullSink().write(bodies)

    def close(self) -> None:
        pass


def test_a_database_error_retries_the_batch_and_acks_after_the_write(
    stopped: list[Scheduler],
) -> None:
    sink = FlakySink(failures=2)
    scheduler = scheduler_with(sink)
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    write(scheduler, received(acme, 1, 2))
    assert sink.calls == 3
    assert channel.acks == [(2, True)] and channel.nacks == []
    assert sample("fairway_scheduler_db_up") == 1


def test_a_batch_still_failing_when_the_drain_ends_stays_unacked(
    stopped: list[Scheduler],
) -> None:
    scheduler = scheduler_with(FlakySink(failures=10**9))
    stopped.append(scheduler)
    scheduler.stopping = True
    scheduler.stop_event.set()
    acme, channel = tenant_channel("acme")
    write(scheduler, received(acme, 1))
    assert channel.acks == [] and channel.nacks == []  # the broker requeues it
    assert scheduler.inflight == 0
    assert sample("fairway_scheduler_db_up") == 0


def test_deliveries_of_a_closed_channel_are_not_settled(stopped: list[Scheduler]) -> None:
    scheduler = scheduler_with(NullSink())
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    batch = received(acme, 1)
    channel.is_open = False
    write(scheduler, batch)
    assert channel.acks == []


def test_buffered_and_prefetch_gauges_read_the_scheduler(stopped: list[Scheduler]) -> None:
    scheduler = scheduler_with(NullSink())
    stopped.append(scheduler)
    assert sample("fairway_scheduler_inflight_batches") == 0
    scheduler.inflight = 2
    assert sample("fairway_scheduler_inflight_batches") == 2
    listed: Future[TenantChanges] = Future()
    listed.set_result(TenantChanges([Tenant("gauged", weight=1, max_backlog=1000)], full=True))
    scheduler._tenants_listed(listed)  # not connected: the pool opens its channel later
    consumer = scheduler.tenant_channels["gauged"]
    for tag in (1, 2, 3):
        scheduler.drr.push("gauged", Delivery(consumer, tag, b"{}", "c1"))
    assert sample("fairway_scheduler_buffered", tenant="gauged") == 3
    consumer.prefetch = 450
    assert sample("fairway_scheduler_prefetch", tenant="gauged") == 450
    del scheduler.tenant_channels["gauged"]  # channel closed: the floor until re-opened
    assert sample("fairway_scheduler_prefetch", tenant="gauged") == Settings().scheduler_prefetch


class MalformedSink:
    """Answers the first ``bad`` writes with ``answer(bodies)``, then a real outcome."""

    def __init__(self, bad: int, answer: Any) -> None:
        self.bad, self.answer, self.calls = bad, answer, 0

    def write(self, bodies: list[bytes]) -> Any:
        self.calls += 1
        if self.calls <= self.bad:
            return self.answer(bodies)
        return NullSink().write(bodies)

    def close(self) -> None:
        pass


MALFORMED = {
    "none": lambda bodies: None,
    "short stored_each": lambda bodies: WriteOutcome(
        stored_each=[1] * (len(bodies) - 1), duplicates=[0] * len(bodies)
    ),
    "refused out of range": lambda bodies: WriteOutcome(
        stored_each=[1] * len(bodies), duplicates=[0] * len(bodies), refused=[len(bodies)]
    ),
    "negative count": lambda bodies: WriteOutcome(
        stored_each=[-1] * len(bodies), duplicates=[0] * len(bodies)
    ),
    "durable not readings": lambda bodies: WriteOutcome(
        stored_each=[1] * len(bodies),
        duplicates=[0] * len(bodies),
        durable=[b"x"],  # type: ignore[list-item]
    ),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_outcome_is_a_failed_write_retried_then_acked(
    stopped: list[Scheduler], kind: str
) -> None:
    sink = MalformedSink(2, MALFORMED[kind])
    scheduler = scheduler_with(sink)
    stopped.append(scheduler)
    before = sample("fairway_scheduler_malformed_outcomes_total")
    acme, channel = tenant_channel("acme")
    write(scheduler, received(acme, 1, 2))
    assert sink.calls == 3  # two malformed answers retried like a failed write
    assert channel.acks == [(2, True)] and channel.nacks == []
    assert sample("fairway_scheduler_malformed_outcomes_total") == before + 2
    assert sample("fairway_scheduler_db_up") == 1
    assert scheduler.inflight == 0


def test_a_sink_always_malformed_leaves_the_batch_unacked_when_the_drain_ends(
    stopped: list[Scheduler],
) -> None:
    scheduler = scheduler_with(MalformedSink(10**9, MALFORMED["short stored_each"]))
    stopped.append(scheduler)
    scheduler.stopping = True
    scheduler.stop_event.set()
    acme, channel = tenant_channel("acme")
    write(scheduler, received(acme, 1))
    assert channel.acks == [] and channel.nacks == []  # the broker requeues it
    assert scheduler.inflight == 0


def test_a_removed_tenant_s_buffered_deliveries_go_back_to_its_queue(
    stopped: list[Scheduler],
) -> None:
    scheduler = scheduler_with(NullSink())
    stopped.append(scheduler)
    listed: Future[TenantChanges] = Future()
    listed.set_result(TenantChanges([Tenant("gone", 1, 1000), Tenant("kept", 1, 1000)], True))
    scheduler._tenants_listed(listed)
    gone, kept = scheduler.tenant_channels["gone"], scheduler.tenant_channels["kept"]
    channel = StubChannel()
    for consumer in (gone, kept):
        consumer.channel = channel
        consumer.acks = gone.acks  # one pooled channel
    method = SimpleNamespace(delivery_tag=1, consumer_tag="c1")
    scheduler._linger_s = 60.0  # keep them buffered
    for tag, consumer in ((1, gone), (2, kept), (3, gone)):
        method = SimpleNamespace(delivery_tag=tag, consumer_tag=f"c-{consumer.tenant}")
        scheduler._on_message(consumer, method, body(consumer.tenant, tag))  # type: ignore[arg-type]
    assert scheduler.drr.backlog("gone") == 2
    removed: Future[TenantChanges] = Future()
    removed.set_result(TenantChanges([], removed={"gone"}))
    scheduler._tenants_listed(removed)
    assert "gone" not in scheduler.tenant_channels and "gone" not in scheduler.known
    assert scheduler.drr.backlog("gone") == 0 and "gone" not in scheduler.drr._weights
    assert channel.nacks == [(1, True), (3, True)]
    # A delivery still on the wire for the cancelled consumer goes back too.
    late = SimpleNamespace(delivery_tag=4, consumer_tag="c-gone")
    scheduler._on_message(gone, late, body("gone", 4))  # type: ignore[arg-type]
    assert channel.nacks[-1] == (4, True) and scheduler.drr.backlog("gone") == 0
    # The other tenant's delivery is written and acked over the requeued tags.
    write(scheduler, scheduler.drr.take(10))
    assert channel.acks == [(2, True)]


def test_at_prefetch_1_only_a_delivery_right_after_an_ack_means_a_backlog() -> None:
    channel = StubChannel()
    consumer = TenantConsumer("t", 1, queue="tenant.t", channel=channel)
    consumer.delivered(1, "c1")  # a quiet tenant's reading: it fills prefetch 1, no more
    assert not consumer.saturated
    consumer.settle([(1, "c1")])
    assert len(channel.acks) == 1
    consumer.delivered(2, "c1")  # the broker had it waiting: sent as soon as the ack came
    assert consumer.saturated
    consumer.saturated = False
    consumer.settle([(2, "c1")])
    consumer.acked_at -= 1.0  # the next reading comes a second after the ack
    consumer.delivered(3, "c1")
    assert not consumer.saturated
    wider = TenantConsumer("w", 2, queue="tenant.w", channel=StubChannel())
    wider.delivered(1, "c1")
    wider.delivered(2, "c1")  # above 1, filling the prefetch still says it
    assert wider.saturated


def test_a_write_that_outlives_the_drain_does_not_hand_out_more_batches() -> None:
    """After the drain's deadline the writer pool is shut down; a write finishing later
    must not submit the next batch to it (RuntimeError on the I/O loop, logged as
    "I/O loop failed")."""
    scheduler = scheduler_with(NullSink())
    consumer, _channel = tenant_channel("late")
    batch = received(consumer, 1, 2)
    scheduler.stopping = True
    scheduler._release()  # the deadline passed: stop_event set, writers shut down
    for tenant, delivery in batch:
        scheduler.drr.push(tenant, delivery, delivery.readings)
    scheduler._dispatch()  # raised "cannot schedule new futures after shutdown"
    assert scheduler.inflight == 0 and len(scheduler.drr) == 2
