"""Consumer recycling of a tenant channel (scheduler/tenant_channel.py), on a recording channel.

The broker side (per-consumer prefetch, deliveries of a cancelled consumer, quorum
queues) is exercised by tests/integration/test_quorum.py; this pins the order of
operations and the bounds.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pika.callback import CallbackManager

from scheduler.channel_pool import PoolChannel
from scheduler.tenant_channel import TenantConsumer


class RecordingChannel:
    """Records what the tenant channel asks of pika; replies are sent by the test."""

    def __init__(self) -> None:
        self.is_open = True
        self.calls: list[tuple[Any, ...]] = []
        self.cancel_callbacks: dict[str, Any] = {}
        self._cancelled: set[str] = set()  # as in pika 1.x
        self._n = 0

    def basic_qos(self, prefetch_count: int, global_qos: bool = False, callback: Any = None):
        self.calls.append(("qos", prefetch_count, global_qos))

    def basic_consume(self, queue: str, on_message_callback: Any) -> str:
        self._n += 1
        tag = f"c{self._n}"
        self.calls.append(("consume", tag))
        return tag

    def basic_cancel(self, consumer_tag: str, callback: Any = None) -> None:
        self._cancelled.add(consumer_tag)
        self.cancel_callbacks[consumer_tag] = callback
        self.calls.append(("cancel", consumer_tag))

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", delivery_tag, multiple))

    def cancel_ok(self, tag: str) -> None:
        self._cancelled.discard(tag)
        self.cancel_callbacks.pop(tag)(SimpleNamespace(method=SimpleNamespace(consumer_tag=tag)))


def _started(prefetch: int = 100) -> tuple[TenantConsumer, RecordingChannel]:
    channel = RecordingChannel()
    consumer = TenantConsumer(
        "acme", prefetch, queue="tenant.acme", channel=channel, on_message=lambda *a: None
    )
    consumer.consume()
    channel.calls.clear()
    return consumer, channel


def test_growing_starts_the_new_consumer_at_once_and_keeps_in_flight_deliveries() -> None:
    consumer, channel = _started(100)
    assert consumer.change_prefetch(1000)
    # The new consumer's own basic.qos goes right before its basic.consume: on a shared
    # channel no other tenant's basic.qos can come between.
    assert channel.calls == [("cancel", "c1"), ("qos", 1000, False), ("consume", "c2")]
    assert "c1" not in channel._cancelled  # pika will hand its late deliveries to us
    assert consumer.consumer_tag == "c2" and consumer.retiring == "c1"


def test_one_recycle_at_a_time_until_the_retiring_consumer_is_drained() -> None:
    consumer, channel = _started(100)
    consumer.delivered(1, "c1")
    consumer.delivered(2, "c1")
    consumer.change_prefetch(1000)
    consumer.delivered(3, "c1")  # on the wire when the cancel went out
    consumer.delivered(4, "c2")
    assert not consumer.change_prefetch(200)  # c1 still holds deliveries
    channel.cancel_ok("c1")
    consumer.settle([(1, "c1"), (2, "c1")])
    assert not consumer.change_prefetch(200)
    consumer.settle([(3, "c1")])
    assert consumer.retiring is None
    assert ("ack", 3, True) in channel.calls  # one watermark over both consumers
    assert consumer.change_prefetch(200)


def test_shrinking_waits_until_the_tenant_holds_no_more_than_before() -> None:
    consumer, channel = _started(1000)
    for tag in range(1, 901):
        consumer.delivered(tag, "c1")
    assert consumer.change_prefetch(250)
    assert channel.calls == [("cancel", "c1")]
    assert consumer.consumer_tag is None
    channel.cancel_ok("c1")
    assert consumer.consumer_tag is None  # holds 900 > 1000 - 250
    consumer.settle([(tag, "c1") for tag in range(1, 150)])
    assert consumer.consumer_tag is None  # 751
    consumer.settle([(150, "c1")])
    assert consumer.consumer_tag == "c2"  # 750 held + 250 new = the old 1000
    assert channel.calls[-2:] == [("qos", 250, False), ("consume", "c2")]
    consumer.settle([(tag, "c1") for tag in range(151, 901)])
    assert consumer.retiring is None


def test_shrinking_an_idle_tenant_starts_once_the_cancel_is_confirmed() -> None:
    consumer, channel = _started(1000)
    consumer.change_prefetch(100)
    assert consumer.consumer_tag is None  # not before cancel-ok: late deliveries may come
    consumer.delivered(1, "c1")
    channel.cancel_ok("c1")
    assert consumer.consumer_tag == "c2"
    consumer.settle([(1, "c1")])
    assert consumer.retiring is None


def test_stop_cancels_and_starts_nothing_more() -> None:
    consumer, channel = _started(1000)
    consumer.delivered(1, "c1")
    consumer.change_prefetch(100)
    consumer.stop()
    channel.cancel_ok("c1")
    consumer.settle([(1, "c1")])
    assert consumer.consumer_tag is None
    assert not consumer.change_prefetch(500)
    assert [c for c in channel.calls if c[0] == "consume"] == []


def test_stop_cancels_the_current_consumer_keeping_its_in_flight_deliveries() -> None:
    consumer, channel = _started(100)
    consumer.stop()
    assert channel.calls == [("cancel", "c1")]
    assert "c1" not in channel._cancelled


def test_a_closed_channel_forgets_every_consumer() -> None:
    consumer, channel = _started(100)
    consumer.delivered(1, "c1")
    consumer.change_prefetch(1000)
    channel.is_open = False
    consumer.reset()
    assert consumer.retiring is None and consumer.consumer_tag is None
    assert consumer.unacked == 0 and not consumer.held


class SharedChannel(RecordingChannel):
    """Cancel callbacks kept the way pika 1.x keeps them: one-shot, keyed by the method,
    so the first ``cancel-ok`` fires every pending one (a registered callable counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks = CallbackManager()

    def basic_cancel(self, consumer_tag: str, callback: Any = None) -> None:
        self._cancelled.add(consumer_tag)
        self.callbacks.add(1, "CancelOk", callback)
        self.calls.append(("cancel", consumer_tag))

    def cancel_ok(self, tag: str) -> None:
        self._cancelled.discard(tag)
        frame = SimpleNamespace(method=SimpleNamespace(consumer_tag=tag))
        self.callbacks.process(1, "CancelOk", self, frame)


def test_cancel_oks_of_tenants_sharing_a_channel_each_reach_their_tenant() -> None:
    channel = SharedChannel()
    slot = PoolChannel(0, channel=channel)  # type: ignore[arg-type]
    consumers = {}
    for tenant in ("a", "b"):
        consumers[tenant] = slot.tenants[tenant] = TenantConsumer(
            tenant,
            1000,
            queue=f"tenant.{tenant}",
            channel=channel,
            on_message=lambda *a: None,
            acks=slot.acks,
            on_cancel_ok=slot.cancel_ok,
        )
        consumers[tenant].consume()
    a, b = consumers["a"], consumers["b"]
    assert a.change_prefetch(100) and b.change_prefetch(100)  # both shrink: wait for cancel-ok
    channel.cancel_ok(a.retiring or "")
    assert a.consumer_tag is not None and b.consumer_tag is None  # b's cancel not confirmed yet
    channel.cancel_ok(b.retiring or "")
    assert b.consumer_tag is not None  # not lost to a's cancel-ok
    assert a.retiring is None and b.retiring is None
