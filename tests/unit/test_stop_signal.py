"""SIGTERM on a real pika I/O loop: it starts a drain, even when it lands inside pika's
wake-up lock.

The handler runs on the loop's thread between any two bytecodes. pika's
``wake_threadsafe`` (behind ``add_callback_threadsafe``) holds a non-reentrant lock, so
a handler that called it there would wait for itself for ever: a scheduler once ignored
SIGTERM until it was killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from fairway.amqp.service import STOP_SIGNALS, AmqpService
from fairway.kernel.settings import Settings


@pytest.fixture
def service() -> Iterator[AmqpService]:
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    service = AmqpService(Settings())
    try:
        yield service
    finally:
        signal.set_wakeup_fd(-1)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run_loop_briefly(service: AmqpService, seconds: float) -> None:
    service.ioloop.call_later(seconds, service.ioloop.stop)
    service.ioloop.start()


def test_sigterm_starts_the_drain_on_the_loop(service: AmqpService) -> None:
    service.install_signal_handlers()
    os.kill(os.getpid(), signal.SIGTERM)
    _run_loop_briefly(service, 0.5)
    assert service.stopping
    assert service.stop_event.is_set()  # no connection: nothing to drain, released


def test_sigterm_inside_pikas_wake_lock_does_not_deadlock(service: AmqpService) -> None:
    service.install_signal_handlers()
    lock = service.ioloop._poller._waking_mutex
    rescued, handled = threading.Event(), threading.Event()

    def rescue() -> None:  # the old handler would wait on the lock: free it, record it
        # A deadline, not a fixed sleep: a loaded machine may be slow to get back here.
        if not handled.wait(30.0):
            rescued.set()
            lock.release()

    lock.acquire()  # as wake_threadsafe holds it, on the loop's thread
    threading.Thread(target=rescue, daemon=True).start()
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode
    time.sleep(0.05)
    handled.set()  # only reached once the handler has returned
    if lock.locked():
        lock.release()
    assert not rescued.is_set(), "the signal handler waited on pika's wake-up lock"
    _run_loop_briefly(service, 0.5)
    assert service.stopping


def test_other_signals_on_the_wakeup_pipe_do_not_stop(service: AmqpService) -> None:
    service.install_signal_handlers()
    saved = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        _run_loop_briefly(service, 0.3)
    finally:
        signal.signal(signal.SIGUSR1, saved)
    assert not service.stopping
