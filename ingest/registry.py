"""The relay's view of the device registry: a bounded TTL cache over MongoDB.

Look-ups never run on the I/O loop. A miss parks the delivery; the missing ids of
all parked deliveries go to MongoDB in one ``$in`` query on a worker thread, and the
answer comes back to the loop through ``add_callback_threadsafe``. If MongoDB is
down the query is retried with backoff while deliveries stay parked (bounded by the
prefetch), so the broker keeps the backlog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cachetools import TTLCache
from pymongo.database import Database

from fairway.amqp.backoff import Backoff
from fairway.storage.registry import Device, find_devices

log = logging.getLogger(__name__)
_MISSING = object()


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
        self._cache: TTLCache[str, Device | None] = TTLCache(maxsize=max_size, ttl=ttl_s)
        self._waiting: dict[str, list[Callable[[Device | None], None]]] = {}
        self._in_flight = False
        self._call_soon = call_soon
        self._call_later = call_later
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._backoff = Backoff(base=0.2, cap=5.0)

    def lookup(self, device: str, then: Callable[[Device | None], None]) -> bool:
        """Call ``then(device or None)`` now if cached (return True), else later (False)."""
        cached = self._cache.get(device, _MISSING)
        if cached is not _MISSING:
            then(cached)  # type: ignore[arg-type]
            return True
        self._waiting.setdefault(device, []).append(then)
        if not self._in_flight:
            self._query()
        return False

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
            self._cache[device] = answer
            for then in self._waiting.pop(device, ()):
                then(answer)
        if self._waiting:  # ids that arrived while the query ran
            self._query()

    def _retry(self) -> None:
        self._in_flight = False
        self._query()
