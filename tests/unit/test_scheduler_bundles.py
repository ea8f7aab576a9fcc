"""The scheduler with bundles (scheduler/service.py, sink.py) on stub channels.

A bundle is charged its readings by the DRR, written whole within a batch, and acked
only once every one of its readings is stored or a duplicate. A bundle with a reading
the database refuses for good is dead-lettered whole. Messages in the format before
bundles (one reading each, no ``x-fairway-readings``) are read as before.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

from pika.exceptions import ChannelClosedByBroker

from fairway.kernel import topology
from fairway.kernel.contract import Reading, bundle_body, bundle_head, bundle_part, reading_id
from fairway.kernel.settings import Settings
from fairway.storage import mongo
from fairway.storage.device_state import DEVICE_STATE
from fairway.storage.rollups import ROLLUP_PENDING
from scheduler.queue_declare import declare_apart
from scheduler.service import Delivery, Scheduler, readings_of
from scheduler.sink import MongoSink, NullSink
from scheduler.tenant_channel import TenantConsumer
from tests.unit.test_scheduler_settle import (
    FakeCollection,
    body,
    sample,
    scheduler_with,
    stopped,  # noqa: F401 - the fixture
    tenant_channel,
    write,
)


def bundle(tenant: str, *ns: int) -> bytes:
    now = time.time()
    parts = [bundle_part(Reading("dev-1", "env", f"m{n}", now, {"t": n}), now) for n in ns]
    return bundle_body(bundle_head(tenant), parts)


def doc_id(tenant: str, n: int) -> str:
    return reading_id(tenant, "dev-1", f"m{n}")


def delivered(consumer: TenantConsumer, tag: int, raw: bytes, readings: int) -> Delivery:
    consumer.delivered(tag, "c1")
    return Delivery(consumer, tag, raw, "c1", readings)


def mongo_sink(collection: FakeCollection) -> MongoSink:
    return MongoSink(
        {
            name: collection
            for name in (
                mongo.TELEMETRY,
                DEVICE_STATE,
                ROLLUP_PENDING,
                mongo.ROLLUP_WRITERS,
                mongo.ROLLUP_TOUCHED,
            )
        }  # type: ignore[arg-type]
    )


def test_the_readings_header_says_what_a_message_costs() -> None:
    assert readings_of(SimpleNamespace(headers={topology.READINGS_HEADER: 40})) == 40
    assert readings_of(SimpleNamespace(headers=None)) == 1  # the format before bundles
    assert readings_of(SimpleNamespace(headers={topology.READINGS_HEADER: 0})) == 1
    assert readings_of(SimpleNamespace(headers={topology.READINGS_HEADER: "9"})) == 1


def test_every_reading_of_a_bundle_is_stored_and_the_bundle_acked(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    collection = FakeCollection()
    scheduler = scheduler_with(mongo_sink(collection))
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    before = sample("fairway_scheduler_stored_total", tenant="acme")
    write(scheduler, [("acme", delivered(acme, 1, bundle("acme", 1, 2, 3), 3))])
    assert collection.stored == [doc_id("acme", n) for n in (1, 2, 3)]
    assert channel.acks == [(1, True)]
    assert sample("fairway_scheduler_stored_total", tenant="acme") - before == 3


def test_old_single_reading_messages_and_bundles_share_a_batch(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    collection = FakeCollection()
    scheduler = scheduler_with(mongo_sink(collection))
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    batch = [
        ("acme", delivered(acme, 1, body("acme", 10), 1)),  # queued before the upgrade
        ("acme", delivered(acme, 2, bundle("acme", 11, 12), 2)),
    ]
    write(scheduler, batch)
    assert sorted(collection.stored) == sorted(doc_id("acme", n) for n in (10, 11, 12))
    assert channel.acks == [(2, True)]


def test_a_redelivered_bundle_is_acked_as_duplicates(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    collection = FakeCollection(duplicate={doc_id("acme", 1), doc_id("acme", 2)})
    scheduler = scheduler_with(mongo_sink(collection))
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    dup_before = sample("fairway_scheduler_duplicates_total", tenant="acme")
    stored_before = sample("fairway_scheduler_stored_total", tenant="acme")
    write(scheduler, [("acme", delivered(acme, 1, bundle("acme", 1, 2, 3), 3))])
    assert channel.acks == [(1, True)] and channel.nacks == []
    assert sample("fairway_scheduler_duplicates_total", tenant="acme") - dup_before == 2
    assert sample("fairway_scheduler_stored_total", tenant="acme") - stored_before == 1


def test_a_bundle_with_a_reading_refused_for_good_is_dead_lettered_whole(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    collection = FakeCollection(refuse={doc_id("acme", 2)})
    scheduler = scheduler_with(mongo_sink(collection))
    stopped.append(scheduler)
    acme, channel = tenant_channel("acme")
    batch = [
        ("acme", delivered(acme, 1, bundle("acme", 1, 2, 3), 3)),
        ("acme", delivered(acme, 2, bundle("acme", 4), 1)),
        ("acme", delivered(acme, 3, b"not relay output", 1)),
    ]
    write(scheduler, batch)
    assert channel.nacks == [(1, False), (3, False)]
    # Every bundle settled; the multiple ack names 2, the last tag the broker still holds:
    # naming 3, already nacked, would close the channel (unknown delivery tag).
    assert channel.acks == [(2, True)]
    assert doc_id("acme", 1) in collection.stored and doc_id("acme", 4) in collection.stored


def test_the_batch_is_whole_bundles_taken_by_readings(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    batches: list[list[bytes]] = []

    class Recording(NullSink):
        def write(self, bodies: list[bytes]) -> Any:
            batches.append(bodies)
            return super().write(bodies)

    # A linger of a minute: partial batches wait for the stop however slowly the loop
    # below runs (with the default 20 ms, a loaded machine sent them between deliveries).
    settings = Settings(batch_size=100, writers=1, batch_linger_ms=60_000)
    scheduler = Scheduler(settings, Recording(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    stopped.append(scheduler)
    scheduler._writers.submit = lambda fn, *a: fn(*a)  # type: ignore[method-assign]
    acme, channel = tenant_channel("acme")
    for tag in range(1, 5):
        method = SimpleNamespace(delivery_tag=tag, consumer_tag="c1")
        raw = bundle("acme", *range(tag * 100, tag * 100 + 40))
        scheduler._on_message(acme, method, raw, 40)  # type: ignore[arg-type]
    # 40 + 40 fit 100 readings, a third would not: whole bundles, never split.
    assert [len(b) for b in batches] == [2]  # the last two (80 readings) linger
    scheduler.stopping = True
    scheduler._dispatch()  # stopping: partial batches go at once
    assert [len(b) for b in batches] == [2, 2]
    assert channel.acks == [(2, True), (4, True)]
    assert sample("fairway_scheduler_batch_size_sum") >= 160


def test_a_queue_of_the_earlier_version_is_consumed_as_it_is() -> None:
    """``declare_apart`` on a fake connection: the refusal of the declaration closes only
    its own channel; the caller goes on to consume either way."""

    class FakeChannel:
        def __init__(self) -> None:
            self.is_open, self.on_close = True, []

        def add_on_close_callback(self, callback: Any) -> None:
            self.on_close.append(callback)

        def queue_declare(self, queue: str, **kwargs: Any) -> None:
            self.declared = (queue, kwargs)

        def close(self) -> None:
            self.is_open = False

    class FakeConnection:
        def channel(self, on_open_callback: Any) -> None:
            self.opened = FakeChannel()
            on_open_callback(self.opened)

    settings = Settings()
    spec = topology.tenant_queue("old", 1000, settings)
    connection, done, mismatched = FakeConnection(), [], []
    declare_apart(connection, spec, lambda: done.append(1), mismatched.append)  # type: ignore[arg-type]
    channel = connection.opened
    assert channel.declared[1]["arguments"] == spec.arguments()
    inequivalent = ChannelClosedByBroker(
        406, "PRECONDITION_FAILED - inequivalent arg 'x-max-length-bytes' for queue 'tenant.old'"
    )
    for callback in channel.on_close:
        callback(channel, inequivalent)
    assert done == [1] and mismatched == ["tenant.old"]

    # Declared as it should be: consume, close the declaring channel, nothing mismatched.
    done.clear()
    mismatched.clear()
    declare_apart(connection, spec, lambda: done.append(1), mismatched.append)  # type: ignore[arg-type]
    channel = connection.opened
    channel.declared[1]["callback"](None)
    assert done == [1] and mismatched == [] and not channel.is_open
    for callback in channel.on_close:  # the close it asked for: nothing more happens
        callback(channel, ChannelClosedByBroker(200, "Normal shutdown"))
    assert done == [1]


def test_a_light_tenant_is_written_in_the_express_batch_while_every_writer_is_busy(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    settings = Settings(batch_size=100, writers=1, express_readings=10, batch_linger_ms=0)
    scheduler = Scheduler(settings, NullSink(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    stopped.append(scheduler)
    submitted: list[tuple[list[str], bool]] = []
    calls: list[Any] = []

    def submit(fn: Any, batch: list[tuple[str, Delivery]], express: bool = False, *_: Any) -> None:
        submitted.append(([t for t, _ in batch], express))
        calls.append(lambda: fn(batch, express))

    scheduler._writers.submit = submit  # type: ignore[method-assign,assignment]
    flood, flood_channel = tenant_channel("flood")
    quiet, quiet_channel = tenant_channel("quiet")
    for tag in range(1, 6):  # 5 bundles of 40: the first goes to the one writer at once
        method = SimpleNamespace(delivery_tag=tag, consumer_tag="c1")
        scheduler._on_message(flood, method, bundle("flood", *range(tag * 100, tag * 100 + 40)), 40)  # type: ignore[arg-type]
    assert submitted == [(["flood"], False)]
    # The writer is busy; the flood's 160 buffered readings never go express.
    assert scheduler.drr.backlog_cost("flood") == 160
    scheduler._on_message(
        quiet, SimpleNamespace(delivery_tag=1, consumer_tag="c1"), bundle("quiet", 1), 1
    )  # type: ignore[arg-type]
    assert submitted[-1] == (["quiet"], True)
    scheduler._on_message(
        quiet, SimpleNamespace(delivery_tag=2, consumer_tag="c1"), bundle("quiet", 2), 1
    )  # type: ignore[arg-type]
    assert len(submitted) == 2  # one express batch at a time: the second waits
    calls[1]()  # the express batch is written and acked
    assert quiet_channel.acks == [(1, True)]
    assert submitted[-1] == (["quiet"], True) and len(submitted) == 3
    calls[0]()  # the writer's batch: the flood's next batch goes to it
    assert flood_channel.acks == [(1, True)]
    assert submitted[-1] == (["flood", "flood"], False)
    assert sample("fairway_scheduler_express_batches_total") >= 2


def test_a_backlogged_tenants_delivery_never_looks_for_an_express_batch(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    """Looking for light tenants walks every tenant with buffered readings, so it is done
    on a light tenant's delivery, when a batch goes to a writer, when a writer is done and
    when a tenant's backlog ends; a backlogged tenant's delivery cannot make an express
    batch possible and costs no look."""
    settings = Settings(batch_size=100, writers=1, express_readings=10, batch_linger_ms=0)
    scheduler = Scheduler(settings, NullSink(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    stopped.append(scheduler)
    submitted: list[tuple[list[str], bool]] = []
    calls: list[Any] = []

    def submit(fn: Any, batch: list[tuple[str, Delivery]], express: bool = False, *_: Any) -> None:
        submitted.append(([t for t, _ in batch], express))
        calls.append(lambda: fn(batch, express))

    scheduler._writers.submit = submit  # type: ignore[method-assign,assignment]
    looks: list[set[str]] = []
    take_light = scheduler.drr.take_light

    def counted(limit: int, exclude: Any = ()) -> Any:
        looks.append(set(exclude))
        return take_light(limit, exclude)

    scheduler.drr.take_light = counted  # type: ignore[method-assign]
    flood, _ = tenant_channel("flood")
    mid, _ = tenant_channel("mid")
    quiet, quiet_channel = tenant_channel("quiet")
    flood.prefetch = mid.prefetch = 1  # their first delivery fills it: backlogged,
    flood.acked_at = mid.acked_at = math.inf  # as if it came right after an ack

    def deliver(consumer: TenantConsumer, tag: int, readings: int) -> None:
        method = SimpleNamespace(delivery_tag=tag, consumer_tag="c1")
        raw = bundle(consumer.tenant, *range(tag * 100, tag * 100 + readings))
        scheduler._on_message(consumer, method, raw, readings)  # type: ignore[arg-type]

    deliver(flood, 1, 40)  # to the one writer at once; every writer busy now: one look
    assert submitted == [(["flood"], False)] and looks == [{"flood"}]
    for tag in range(2, 6):
        deliver(flood, tag, 40)
    deliver(mid, 1, 1)
    assert scheduler.backlogged == {"flood", "mid"}
    assert len(looks) == 1 and len(submitted) == 1  # backlogged deliveries: no look
    # mid's prefetch is raised (a re-share) and it stops filling it: its backlog ends and
    # its buffered reading goes express without waiting for another delivery.
    mid.prefetch, mid.saturated = 5, False
    scheduler._check_backlogged()
    assert "mid" not in scheduler.backlogged and submitted[-1] == (["mid"], True)
    calls[-1]()  # the express batch is written: the express writer is free, one look
    assert len(looks) == 3 and len(submitted) == 2
    deliver(quiet, 1, 1)  # a light delivery looks, and goes express
    assert len(looks) == 4 and submitted[-1] == (["quiet"], True)
    calls[-1]()
    assert quiet_channel.acks == [(1, True)]
    assert scheduler.drr.backlog_cost("flood") == 160  # never express
