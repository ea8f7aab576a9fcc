"""Unit tests for the simulator's publisher-confirm accounting and device mix."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pika.spec import Basic

from fairway.devtools.simulator import (
    Simulator,
    batch_body,
    device_ids,
    tenant_ids,
    weighted_devices,
)
from fairway.kernel.contract import parse_message
from fairway.kernel.settings import Settings


class FakeChannel:
    """Records publishes; the simulator numbers them 1, 2, ... as a confirming channel does."""

    def __init__(self) -> None:
        self.published: list[str] = []

    def basic_publish(self, _exchange: str, _key: str, _body: bytes, props: Any) -> None:
        self.published.append(props.message_id)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    s = Simulator(Settings(), iter(()), rate=1.0, progress=False)
    s._channel = FakeChannel()
    try:
        yield s
    finally:
        s.ioloop.close()


def publish(sim: Simulator, n: int) -> None:
    """``n`` new messages on the current channel (tags continue from the last)."""
    for _ in range(n):
        sim.summary.sent += 1
        sim._publish(("d.env", b"{}", f"m{sim.summary.sent}"))


def ack(tag: int, multiple: bool = False) -> SimpleNamespace:
    return SimpleNamespace(method=Basic.Ack(delivery_tag=tag, multiple=multiple))


def nack(tag: int, multiple: bool = False) -> SimpleNamespace:
    return SimpleNamespace(method=Basic.Nack(delivery_tag=tag, multiple=multiple))


def counts(sim: Simulator) -> tuple[int, int]:
    return sim.summary.confirmed, sim.summary.nacked


def test_single_acks(sim: Simulator) -> None:
    publish(sim, 3)
    for tag in (1, 2, 3):
        sim._on_confirm(ack(tag))
    assert counts(sim) == (3, 0)


def test_multiple_ack_counts_the_range(sim: Simulator) -> None:
    publish(sim, 8)
    sim._on_confirm(ack(5, multiple=True))
    assert counts(sim) == (5, 0)
    sim._on_confirm(ack(8, multiple=True))
    assert counts(sim) == (8, 0)


def test_singles_then_multiple_not_double_counted(sim: Simulator) -> None:
    publish(sim, 5)
    sim._on_confirm(ack(2))
    sim._on_confirm(ack(4))
    assert counts(sim) == (2, 0)
    sim._on_confirm(ack(5, multiple=True))  # covers 1, 3, 5
    assert counts(sim) == (5, 0)


def test_single_above_multiple_counted_once(sim: Simulator) -> None:
    publish(sim, 7)
    sim._on_confirm(ack(6))
    sim._on_confirm(ack(3, multiple=True))  # 1..3
    assert counts(sim) == (4, 0)
    sim._on_confirm(ack(7, multiple=True))  # 4, 5, 7 (6 already)
    assert counts(sim) == (7, 0)


def test_nacks_counted_separately(sim: Simulator) -> None:
    publish(sim, 7)
    sim._on_confirm(nack(2))
    sim._on_confirm(ack(3, multiple=True))  # 1, 3
    sim._on_confirm(nack(6, multiple=True))  # 4, 5, 6
    sim._on_confirm(ack(7))
    assert counts(sim) == (3, 4)


def test_duplicate_single_confirm_counts_nothing(sim: Simulator) -> None:
    publish(sim, 4)
    sim._on_confirm(ack(2))
    sim._on_confirm(ack(2))
    sim._on_confirm(ack(4, multiple=True))
    sim._on_confirm(ack(3))  # already covered by the multiple
    assert counts(sim) == (4, 0)


def test_stale_multiple_confirm_counts_nothing(sim: Simulator) -> None:
    publish(sim, 5)
    sim._on_confirm(ack(5, multiple=True))
    sim._on_confirm(ack(3, multiple=True))
    assert counts(sim) == (5, 0)
    sim._on_confirm(ack(5, multiple=True))
    assert counts(sim) == (5, 0)


def test_unconfirmed_tracks_sent_minus_settled(sim: Simulator) -> None:
    publish(sim, 10)
    sim._on_confirm(ack(3, multiple=True))
    sim._on_confirm(nack(5))
    assert sim._unconfirmed == 6
    sim._on_confirm(ack(10, multiple=True))
    assert sim._unconfirmed == 0


def test_a_lost_connection_publishes_the_unconfirmed_again_first(sim: Simulator) -> None:
    """On the next channel the unconfirmed go out again, in order, under the same ids;
    each is counted once whichever publish is confirmed."""
    publish(sim, 5)
    sim._on_confirm(ack(2, multiple=True))  # m1, m2 confirmed; m3..m5 not
    sim._started = 1.0  # connected once: an outage, not a wrong URL
    sim._lost("connection closed")  # (its retry timer never runs: the loop is not started)
    assert sim._channel is None and sim.summary.reconnects == 1
    assert sim._unconfirmed == 3
    new = sim._channel = FakeChannel()
    sim._tag = 0  # a fresh channel numbers its publishes from 1 again
    sim.total = sim.summary.sent  # publish nothing new
    sim._tick()
    assert new.published == ["m3", "m4", "m5"]
    assert sim.summary.resent == 3
    sim._on_confirm(ack(3, multiple=True))
    assert counts(sim) == (5, 0) and sim._unconfirmed == 0


def test_the_broker_list_is_walked_on_each_loss(sim: Simulator) -> None:
    urls = "amqp://g:g@127.0.0.1:1/%2F,amqp://g:g@127.0.0.1:2/%2F,amqp://g:g@127.0.0.1:3/%2F"
    s = Simulator(Settings(amqp_url=urls), iter(()), rate=1.0, progress=False)
    try:
        s._started = 1.0  # connected once: an outage, not a wrong URL
        seen = [s.brokers.address]
        for _ in range(3):
            s._lost("connection closed")
            seen.append(s.brokers.address)
        assert seen == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]
    finally:
        s.ioloop.close()


def test_a_nack_is_given_up_by_default(sim: Simulator) -> None:
    publish(sim, 3)
    sim._on_confirm(nack(2, multiple=True))
    assert counts(sim) == (0, 2) and sim._unconfirmed == 1
    sim.total = sim.summary.sent  # publish nothing new
    sim._tick()
    assert sim._channel.published == ["m1", "m2", "m3"]  # not published again


def test_retry_nacked_publishes_the_refused_again_later(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nacked message stays unconfirmed and goes out again, same id, after the delay."""
    import fairway.devtools.simulator as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    sim.retry_nacked = True
    publish(sim, 3)
    sim.total = sim.summary.sent  # publish nothing new
    sim._on_confirm(nack(2, multiple=True))
    sim._on_confirm(ack(3))
    assert counts(sim) == (1, 0) and sim.summary.retried == 2 and sim._unconfirmed == 2
    now[0] += module.RETRY_NACKED_S / 2
    sim._tick()
    assert sim._channel.published == ["m1", "m2", "m3"]  # not yet
    now[0] += module.RETRY_NACKED_S
    sim._tick()
    assert sim._channel.published == ["m1", "m2", "m3", "m1", "m2"]
    sim._on_confirm(ack(5, multiple=True))  # the new tags 4 and 5
    assert counts(sim) == (3, 0) and sim._unconfirmed == 0 and sim.summary.resent == 2


@pytest.mark.parametrize("seed", range(25))
def test_random_broker_confirms_count_each_publish_once(seed: int) -> None:
    rng = random.Random(seed)
    sim = Simulator(Settings(), iter(()), rate=1.0, progress=False)
    sim._channel = FakeChannel()
    try:
        published = 0
        unconfirmed: list[int] = []  # kept sorted
        confirmed = nacked = 0
        for _ in range(400):
            if rng.random() < 0.4 or not unconfirmed:
                n = rng.randint(1, 6)
                publish(sim, n)
                unconfirmed.extend(range(published + 1, published + n + 1))
                published += n
                continue
            positive = rng.random() < 0.8
            if rng.random() < 0.5:
                # a single confirm for any unconfirmed publish
                tag = rng.choice(unconfirmed)
                unconfirmed.remove(tag)
                covered = 1
                frame = ack(tag) if positive else nack(tag)
            else:
                # broker semantics: multiple covers every unconfirmed tag <= tag, and
                # names an unconfirmed tag
                tag = rng.choice(unconfirmed)
                covered = sum(1 for t in unconfirmed if t <= tag)
                unconfirmed = [t for t in unconfirmed if t > tag]
                frame = ack(tag, True) if positive else nack(tag, True)
            if positive:
                confirmed += covered
            else:
                nacked += covered
            sim._on_confirm(frame)
            assert counts(sim) == (confirmed, nacked)
        if unconfirmed:
            sim._on_confirm(ack(unconfirmed[-1], multiple=True))
            confirmed += len(unconfirmed)
        assert counts(sim) == (confirmed, nacked)
        assert confirmed + nacked == published
    finally:
        sim.ioloop.close()


# -- device mix ------------------------------------------------------------------------


def test_ids() -> None:
    assert tenant_ids(3) == ["sim01", "sim02", "sim03"]
    assert device_ids("sim02", 2) == ["sim02-d0001", "sim02-d0002"]


def take(it: Iterator[str], n: int) -> list[str]:
    return [next(it) for _ in range(n)]


def test_weighted_devices_noisy_factor() -> None:
    by_tenant = {t: device_ids(t, 3) for t in tenant_ids(3)}
    noisy = {"sim02": 4.0}
    pool_size = 3 + 3 * 4 + 3
    first = take(weighted_devices(by_tenant, noisy), pool_size)
    c = Counter(first)
    for t, devices in by_tenant.items():
        for d in devices:
            assert c[d] == (4 if t == "sim02" else 1)
    per_tenant = Counter(d.split("-")[0] for d in first)
    assert per_tenant == {"sim01": 3, "sim02": 12, "sim03": 3}


def test_weighted_devices_cycles_the_same_pool() -> None:
    by_tenant = {t: device_ids(t, 2) for t in tenant_ids(2)}
    seq = take(weighted_devices(by_tenant, {"sim01": 3.0}), 8 * 3)
    assert seq[:8] == seq[8:16] == seq[16:24]


def test_weighted_devices_deterministic() -> None:
    by_tenant = {t: device_ids(t, 5) for t in tenant_ids(4)}
    a = take(weighted_devices(by_tenant, {"sim03": 2.0}), 100)
    b = take(weighted_devices(by_tenant, {"sim03": 2.0}), 100)
    assert a == b


@pytest.mark.parametrize(("factor", "copies"), [(0.2, 1), (0.0, 1), (1.4, 1), (1.6, 2), (3.0, 3)])
def test_weighted_devices_factor_rounding(factor: float, copies: int) -> None:
    by_tenant = {"sim01": ["sim01-d0001"], "sim02": ["sim02-d0001"]}
    pool = take(weighted_devices(by_tenant, {"sim01": factor}), 1 + copies)
    assert Counter(pool) == {"sim01-d0001": copies, "sim02-d0001": 1}


def test_a_batch_simulator_counts_rate_and_total_in_readings() -> None:
    sim = Simulator(Settings(), iter(()), rate=1000.0, total=25, batch=10, progress=False)
    try:
        assert sim.rate == 100.0  # messages per second
        assert sim.total == 3  # 25 readings round up to three whole batches
        sim.summary.confirmed = 3
        assert sim.summary.readings == 30
    finally:
        sim.ioloop.close()
    body = batch_body(1795487400.0, 10)
    elements = orjson.loads(body)
    assert len(elements) == 10 and all("id" not in e for e in elements)
    message = parse_message("d-1.env", body, Settings(), message_id="run-7", now=1795487400.0)
    assert message.batch and message.refused == []
    assert [r.message_id for _, r in message.readings] == [f"run-7#{i}" for i in range(10)]
