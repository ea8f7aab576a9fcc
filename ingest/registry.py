"""The relay's view of the device registry: a bounded TTL cache over MongoDB.

Look-ups never run on the I/O loop. A miss parks the delivery; the missing ids of
all parked deliveries go to MongoDB in one ``$in`` query on a worker thread, and the
answer comes back to the loop through ``add_callback_threadsafe``. If MongoDB is
down the query is retried with backoff while deliveries stay parked (bounded by the
prefetch), so the broker keeps the backlog.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from pymongo.database import Database

from fairway.amqp.backoff import Backoff
from fairway.storage.registry import Device, find_devices

log = logging.getLogger(__name__)


class _Missing:
    """Not in the cache (or expired): ``None`` is a cached answer, "no such device"."""


MISSING: Final = _Missing()


class DeviceRegistry:
    """Cached device look-ups that answer on the I/O loop."""

    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float,
        max_size: int,
        call_soon: Callable[[Callable[[], None]], None],
        call_later: Callable[[float, Callable[[], None]], Any],
    ) -> None:
        self._db = db
        # device -> (expires at, answer), least recently used first: an OrderedDict used
        # directly, as cachetools' TTLCache costs ~3 us per look-up on the relay's hot path.
        # An entry lives ``ttl_s`` from its answer (0: never served); LRU beyond ``max_size``.
        self._cache: OrderedDict[str, tuple[float, Device | None]] = OrderedDict()
        self._ttl_s, self._max_size = ttl_s, max_size
        self._waiting: dict[str, list[Callable[[Device | None], None]]] = {}
        self._in_flight = False
        self._call_soon = call_soon
        self._call_later = call_later
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._backoff = Backoff(base=0.2, cap=5.0)

    def lookup(self, device: str, then: Callable[[Device | None], None]) -> bool:
        """Call ``then(device or None)`` now if cached (return True), else later (False)."""
        cached = self.cached(device)
        if cached is not MISSING:
            then(cached)  # type: ignore[arg-type]
            return True
        self.wait(device, then)
        return False

    def cached(self, device: str) -> Device | _Missing | None:
        """The cached answer for ``device`` (None: not registered), or :data:`MISSING`."""
        entry = self._cache.get(device)
        if entry is None:
            return MISSING
        if entry[0] <= time.monotonic():
            del self._cache[device]
            return MISSING
        self._cache.move_to_end(device)
        return entry[1]

    def wait(self, device: str, then: Callable[[Device | None], None]) -> None:
        """Call ``then(device or None)`` once the database answers (``device`` not cached)."""
        self._waiting.setdefault(device, []).append(then)
        if not self._in_flight:
            self._query()

    def remember(self, device: str, answer: Device | None) -> None:
        """Cache ``answer`` for ``device`` for the TTL (the least recently used goes beyond
        the bound)."""
        cache = self._cache
        cache.pop(device, None)
        if len(cache) >= self._max_size:
            cache.popitem(last=False)
        cache[device] = (time.monotonic() + self._ttl_s, answer)

    @property
    def parked(self) -> int:
        """Callers waiting for an answer."""
        # list() copies in one step: the metrics thread reads this while the loop parks.
        return sum(len(v) for v in list(self._waiting.values()))

    def close(self) -> None:
        """Stop the worker thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _query(self) -> None:
        ids = list(self._waiting)
        if not ids:
            return
        self._in_flight = True
        future = self._pool.submit(find_devices, self._db, ids)
        future.add_done_callback(lambda f: self._call_soon(lambda: self._answered(ids, f)))

    def _answered(self, ids: list[str], future: Any) -> None:
        self._in_flight = False
        try:
            found: dict[str, Device | None] = future.result()
        except Exception as exc:  # database down, timeout, or pool shut down: retry
            delay = self._backoff.next()
            log.warning("registry look-up failed", extra={"error": repr(exc), "retry_s": delay})
            self._in_flight = True  # hold further queries until the retry
            self._call_later(delay, self._retry)
            return
        self._backoff.reset()
        for device in ids:
            answer = found.get(device)
            self.remember(device, answer)
            for then in self._waiting.pop(device, ()):
                then(answer)
        if self._waiting:  # ids that arrived while the query ran
            self._query()

    def _retry(self) -> None:
        self._in_flight = False
        self._query()
