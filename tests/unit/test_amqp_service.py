"""The consumer base (fairway/amqp/service.py) on a stub connection and a virtual clock.

Pins what every process relies on: declared consumers opened on each connect
(channel -> prepare -> per-consumer qos -> consume), timers started once per process,
and one drain (cancel, poll ``drained()`` until true or the deadline, then close).
"""

from __future__ import annotations

from typing import Any

import pytest

from fairway.amqp import service as service_module
from fairway.amqp.service import AmqpService, Consumer, DrainExpired
from fairway.kernel.settings import Settings


class VirtualLoop:
    """Stands in for pika's IOLoop: timers run when the test advances the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Any]] = []
        self.stopped = False
        self._n = 0

    def call_later(self, delay: float, callback: Any) -> None:
        self._n += 1
        self.timers.append((self.now + delay, self._n, callback))

    def add_callback_threadsafe(self, callback: Any) -> None:
        self.call_later(0.0, callback)

    def stop(self) -> None:
        self.stopped = True

    def advance(self, seconds: float) -> None:
        """Run every timer due within ``seconds``, in order."""
        end = self.now + seconds
        while True:
            due = sorted(t for t in self.timers if t[0] <= end)
            if not due:
                break
            self.timers.remove(due[0])
            self.now = max(self.now, due[0][0])
            due[0][2]()
        self.now = end


class StubChannel:
    """Answers every request at once and records it."""

    def __init__(self) -> None:
        self.is_open = True
        self.calls: list[tuple[Any, ...]] = []
        self.close_callbacks: list[Any] = []

    def add_on_close_callback(self, callback: Any) -> None:
        self.close_callbacks.append(callback)

    def basic_qos(
        self, prefetch_count: int, global_qos: bool = False, callback: Any = None
    ) -> None:
        self.calls.append(("qos", prefetch_count, global_qos))
        callback(None)

    def basic_consume(self, queue: str, on_message_callback: Any) -> str:
        self.calls.append(("consume", queue))
        return f"ctag-{queue}"

    def basic_cancel(self, consumer_tag: str, callback: Any = None) -> None:
        self.calls.append(("cancel", consumer_tag))


class StubConnection:
    def __init__(self) -> None:
        self.is_open = True
        self.channels: list[StubChannel] = []
        self.closed = 0

    def channel(self, on_open_callback: Any) -> None:
        channel = StubChannel()
        self.channels.append(channel)
        on_open_callback(channel)

    def close(self) -> None:
        self.closed += 1


class Service(AmqpService):
    name = "test-service"
    drain_timeout_s = 1.0

    def __init__(self) -> None:
        super().__init__(Settings())
        self.ticks = 0
        self.busy = True
        self.released = 0
        self.declared = Consumer("work", 7, lambda *_: None, prepare=self._prepare)
        self.prepared = 0
        self.every(1.0, self._tick, first=0.5)

    def _prepare(self, channel: Any, then: Any) -> None:
        self.prepared += 1
        then()

    def _tick(self) -> None:
        self.ticks += 1

    def consumers(self) -> list[Consumer]:
        return [self.declared]

    def drained(self) -> bool:
        return not self.busy

    def after_drain(self) -> None:
        self.released += 1


@pytest.fixture
def svc(monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.setattr(service_module, "IOLoop", VirtualLoop)
    service = Service()
    loop: Any = service.ioloop
    monkeypatch.setattr(service_module.time, "monotonic", lambda: loop.now)
    return service


def loop(svc: Service) -> VirtualLoop:
    assert isinstance(svc.ioloop, VirtualLoop)
    return svc.ioloop


def connect(svc: Service) -> StubConnection:
    connection = StubConnection()
    svc.connection = connection  # type: ignore[assignment]
    svc._on_open(connection)  # type: ignore[arg-type]
    return connection


def test_declared_consumers_are_prepared_then_prefetched_then_consumed(svc: Service) -> None:
    connection = connect(svc)
    [channel] = connection.channels
    assert svc.prepared == 1
    assert channel.calls == [("qos", 7, False), ("consume", "work")]
    assert svc.declared.channel is channel and svc.declared.tag == "ctag-work"


def test_timers_start_once_per_process_not_once_per_connect(svc: Service) -> None:
    connect(svc)
    loop(svc).advance(2.6)  # ticks at 0.5, 1.5, 2.5
    assert svc.ticks == 3
    svc._on_closed(None, ConnectionError("gone"))  # type: ignore[arg-type]
    loop(svc).timers = [t for t in loop(svc).timers if t[2] != svc._connect]  # no broker
    connect(svc)  # a reconnect opens the consumers again, but no second timer chain
    loop(svc).advance(2.0)
    assert svc.ticks == 5


def test_drain_cancels_polls_until_drained_then_closes(svc: Service) -> None:
    connection = connect(svc)
    svc.stop()
    loop(svc).advance(0.5)
    assert ("cancel", "ctag-work") in connection.channels[0].calls
    assert svc.stopping and connection.closed == 0 and svc.released == 0
    svc.busy = False
    loop(svc).advance(0.05)
    assert svc.released == 1 and connection.closed == 1
    assert svc.stop_event.is_set()


def test_drain_gives_up_at_the_deadline(svc: Service) -> None:
    connection = connect(svc)
    svc.stop()
    loop(svc).advance(0.9)
    assert connection.closed == 0
    loop(svc).advance(0.2)  # drain_timeout_s = 1.0: close with work still in hand
    assert svc.released == 1 and connection.closed == 1


def test_timers_stop_while_stopping(svc: Service) -> None:
    connect(svc)
    loop(svc).advance(0.6)
    svc.stop()
    loop(svc).advance(3.0)
    assert svc.ticks == 1


def test_retrying_retries_then_gives_up_once_the_drain_is_over(svc: Service) -> None:
    attempts: list[int] = []
    errors: list[Exception] = []
    svc.stop_event.wait = lambda _delay: True  # type: ignore[method-assign]

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("database down")
        return "done"

    assert svc.retrying("write", flaky, on_error=errors.append) == "done"
    assert len(attempts) == 3 and len(errors) == 2

    def down() -> None:
        raise ConnectionError("database down")

    svc.stopping = True
    svc.stop_event.set()
    with pytest.raises(DrainExpired):
        svc.retrying("write", down)


def test_a_closed_consuming_channel_reconnects(svc: Service) -> None:
    connection = connect(svc)
    channel = connection.channels[0]
    channel.is_open = False
    channel.close_callbacks[0](channel, RuntimeError("PRECONDITION_FAILED"))
    assert connection.closed == 1  # the reconnect declares and consumes anew
    assert svc.declared.channel is None


def test_stopping_while_disconnected_releases_at_once(svc: Service) -> None:
    svc.stop()  # never connected: nothing received, nothing to drain
    loop(svc).advance(0.0)
    assert loop(svc).stopped and svc.released == 1 and svc.stop_event.is_set()


def test_the_connection_is_fastconns(svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service connects with fastconn's class, not pika's: its deliveries decoded in
    place and its writes joined (fairway.amqp.fastconn, issue 11)."""
    import pika

    from fairway.amqp import fastconn

    built: list[type] = []

    def record(self: Any, *_args: Any, **_kwargs: Any) -> None:
        built.append(type(self))  # no socket: only which class is built

    monkeypatch.setattr(service_module, "declare_topology", lambda *_a, **_k: None)
    monkeypatch.setattr(pika.SelectConnection, "__init__", record)
    svc._connect()
    assert built == [fastconn.SelectConnection]
    assert type(svc.connection) is fastconn.SelectConnection
