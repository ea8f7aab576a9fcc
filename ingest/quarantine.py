"""Device quarantine on the relay: when refusals beyond budget call for it, and acting.

The relay feeds every refusal beyond a device's refusal budget, for what the device
sent (:data:`COUNTED`), to :meth:`QuarantineWatch.over_budget`, costing its readings or
one unit per KiB of its body if more (the refusal pace's units: a junk flood counts by
its bytes). A token bucket per device of ``quarantine_refusals`` units, refilled over
``quarantine_window_s``, absorbs them: it empties only when the device is refused
beyond its budget by more than ``quarantine_refusals`` above that refill. A device
that sends a few bad readings never reaches this at all (the refusal budget keeps its
first ``rejected_device_burst`` refusals and ``rejected_device_rate`` a second), and one
over its budget at a trickle refills faster than it spends.

:class:`QuarantineWatch` decides (pure); :class:`Quarantiner` acts. Once empty, the
answer is True at most once per ``recheck_s`` per device: the relay then imposes the
quarantine (idempotent) or, if it holds already, closes the device's connections again
(RabbitMQ's auth cache may let a reconnect through for its TTL; the relay that imposed
it also closes any connection of the device every ``SWEEP_S`` for that long). A device
with no open connection is not quarantined anew: its refusals are what it queued before.
Every management-API call that closes connections, or lists them for the sweep, comes
out of a per-relay budget (:class:`CallBudget`: one for the sweep, one for the worker);
docs/security.md argues the longest a quarantined device stays connected under them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cachetools import LRUCache
from pymongo.database import Database

from fairway.amqp import management
from fairway.kernel.ids import is_reserved_id, is_valid_id
from fairway.kernel.reasons import Reason
from fairway.kernel.settings import Settings
from fairway.storage import quarantine, registry
from fairway.storage.quarantine import REASON
from ingest import metrics
from ingest.ratelimit import RateLimiter

log = logging.getLogger(__name__)

RECHECK_S = 2.0
# After imposing, the relay closes any connection of the device every SWEEP_S for
# SWEEP_FOR_S: RabbitMQ's auth cache (auth_cache.cache_ttl, 60 s in every configuration
# Fairway ships) admits a reconnect with the same password until then, without asking.
# SWEEP_FOR_S covers the cache's 60 s plus the longest a connection admitted just before
# it expires waits for its close under the budget below (docs/security.md).
SWEEP_S = 0.25
SWEEP_FOR_S = 70.0
SWEEP_MAX_DEVICES = 100
# The sweep's calls (closes and lists): at most SWEEP_CALLS_PER_S a second per relay,
# bursts of SWEEP_CALLS_BURST (a close costs the broker about 0.7 ms of CPU at 1,000
# connections, benchmarks.quarantine_calls), least recently served device first. It lists
# every connection in one call instead of closing each swept device in turn when that is
# cheaper: a list costs about one close per LIST_ROWS_PER_CALL connections it returns
# (7.2 ms against 0.7 at 1,000). The worker's closes (at a new quarantine, and of a held
# one at later refusals beyond budget) have a budget of their own, CLOSES_PER_S and
# CLOSES_BURST, so they cannot take the sweep's turns (docs/security.md's bound).
SWEEP_CALLS_PER_S = 20.0
SWEEP_CALLS_BURST = 20.0
LIST_ROWS_PER_CALL = 100
CLOSES_PER_S = 5.0
CLOSES_BURST = 20.0
LIFT_CHECK_S = 1.0  # how often the sweep re-reads its devices' records (a lift ends it)
# "Is the device connected?" before a new quarantine: a "no" is kept NOT_CONNECTED_TTL_S
# (a device draining what it queued before asks again at most that often), and the
# quarantiner asks the management API at most CHECKS_PER_S a second, bursts of
# CHECKS_BURST, whatever the number of devices refused beyond their bucket. A device not
# asked about now is acted on at a later refusal (RECHECK_S): the flood it would be
# quarantined for keeps producing them.
NOT_CONNECTED_TTL_S = 10.0
CHECKS_PER_S = 5.0
CHECKS_BURST = 20.0
# Refusals of what the device sent. Not counted: its tenant's backlog being full or gone
# (the scheduler's state, not the device's doing) and the registry's verdicts (unknown,
# disabled: already kept out at login).
COUNTED = frozenset(
    {
        Reason.TOO_LARGE,
        Reason.MALFORMED_JSON,
        Reason.SCHEMA,
        Reason.BAD_ROUTING_KEY,
        Reason.IDENTITY_MISMATCH,
        Reason.CLOCK_SKEW,
        Reason.RATE_LIMITED,
        Reason.TOO_MANY_READINGS,
    }
)


class QuarantineWatch:
    """Per device: has it been refused beyond its budget for long enough?"""

    def __init__(
        self, refusals: int, window_s: float, max_keys: int, recheck_s: float = RECHECK_S
    ) -> None:
        self.enabled = refusals > 0
        self._bucket = RateLimiter(refusals / window_s if self.enabled else 1.0, refusals, max_keys)
        self.recheck_s = recheck_s
        self._acted: LRUCache[str, float] = LRUCache(max_keys)

    def over_budget(self, device: str, now: float, readings: int = 1) -> bool:
        """Count ``readings`` refused beyond ``device``'s budget at ``now`` (monotonic);
        True when the relay should act on the device now."""
        if not self.enabled or self._bucket.allow(device, now, readings):
            return False
        last = self._acted.get(device)
        if last is not None and now - last < self.recheck_s:
            return False
        self._acted[device] = now
        return True


class ConnectedCheck:
    """Whether a device has an open connection, asked of the management API (``ask``)
    within a budget of calls, with recent "no" answers kept (bounded, observable)."""

    def __init__(
        self,
        ask: Callable[[str], bool],
        max_keys: int,
        ttl_s: float = NOT_CONNECTED_TTL_S,
        per_s: float = CHECKS_PER_S,
        burst: float = CHECKS_BURST,
    ) -> None:
        self._ask, self._ttl_s = ask, ttl_s
        self._not_connected: LRUCache[str, float] = LRUCache(max_keys)  # device -> until
        self._calls = RateLimiter(per_s, burst, 1)

    def __call__(self, device: str, now: float) -> bool | None:
        """True or False; None when the budget of calls is spent (not asked)."""
        if self._not_connected.get(device, 0.0) > now:
            metrics.QUARANTINE_CONNECTED_CHECKS.labels("cached").inc()
            return False
        if not self._calls.allow("", now):
            metrics.QUARANTINE_CONNECTED_CHECKS.labels("limited").inc()
            return None
        metrics.QUARANTINE_CONNECTED_CHECKS.labels("asked").inc()
        connected = self._ask(device)
        if connected:
            self._not_connected.pop(device, None)
        else:
            self._not_connected[device] = now + self._ttl_s
        metrics.QUARANTINE_CONNECTED_CACHED.set(len(self._not_connected))
        return connected


class CallBudget:
    """A budget of management-API calls that close connections or list them (a token
    bucket of ``per_s`` a second, bursts of ``burst``, safe across threads); every call
    asked or refused is counted by kind."""

    def __init__(self, per_s: float, burst: float) -> None:
        self._bucket = RateLimiter(per_s, burst, 1)
        self._lock = threading.Lock()

    def left(self, now: float) -> float:
        """Calls left at ``now`` (monotonic)."""
        with self._lock:
            return self._bucket.peek("", now)

    def take(self, call: str, now: float) -> bool:
        """One ``call`` (``close``, ``sweep_close``, ``list``) at ``now``; False (counted
        as limited) if none is left."""
        with self._lock:
            allowed = self._bucket.allow("", now)
        metrics.QUARANTINE_MGMT_CALLS.labels(call, "asked" if allowed else "limited").inc()
        return allowed

    def owed(self, call: str) -> None:
        """A ``call`` made whatever is left (a new quarantine's one close); counted."""
        metrics.QUARANTINE_MGMT_CALLS.labels(call, "asked").inc()


class Sweep:
    """One pass of the sweep over the devices quarantined lately: closes their
    connections within the budget, least recently served first, so every swept device
    is served in turn whatever their number.

    Two ways, whichever costs the broker less: one close per device (a close finding
    nothing is a no-op), or one list of every connection (``list_users``: the vhost's
    user names and the cluster's connection count) and a close for each swept device
    it shows. The list's cost grows with the fleet, learnt from its last answer.
    """

    def __init__(
        self,
        budget: CallBudget,
        list_users: Callable[[], tuple[set[str], int]],
        close: Callable[[str], None],
        vhost: str,
    ) -> None:
        self.budget, self._list_users, self._close, self._vhost = budget, list_users, close, vhost
        self.fleet = 0  # connections the last list returned
        self._served: dict[str, float] = {}  # device -> when last closed or seen unconnected

    def list_cost(self) -> float:
        """A list's cost in closes, from the size of the last one."""
        return 1.0 + self.fleet / LIST_ROWS_PER_CALL

    def run(self, devices: list[str], now: float) -> list[str]:
        """Serve ``devices`` at ``now`` (monotonic); the user names closed."""
        for gone in set(self._served) - set(devices):
            del self._served[gone]
        order = sorted(devices, key=lambda d: self._served.get(d, float("-inf")))
        targets = [(device, [device]) for device in order]
        # A list costs the broker 1 + C/100 closes' worth: made only when that is less
        # than the closes this pass can afford, so a pass costs at most twice its budget.
        left = self.budget.left(now)
        if min(len(order), left) > self.list_cost() and left >= 2.0:
            self.budget.take("list", now)
            try:
                users, self.fleet = self._list_users()
            except Exception:  # a failed list must not stop the closes: this pass closes each
                log.debug("listing connections failed; closing each swept device", exc_info=True)
            else:
                targets = []
                for device in order:
                    names = [n for n in (device, f"{self._vhost}:{device}") if n in users]
                    if names:
                        targets.append((device, names))
                    else:
                        self._served[device] = now  # not connected: nothing to close now
        closed: list[str] = []
        for device, names in targets:
            if not self.budget.take("sweep_close", now):
                continue  # counted as limited; first in line at the next pass
            self._served[device] = now
            for name in names:
                try:
                    self._close(name)
                    closed.append(name)
                except Exception:  # the next pass tries again
                    log.debug("sweep of %s failed", name, exc_info=True)
        return closed


class Quarantiner:
    """The relay's side of quarantine: watch refusals, impose and close off the I/O loop.

    Imposing reads the registry and writes ``quarantines``; closing calls the management
    API (which may wait seconds for a young connection): both on one worker thread, so
    the relay's I/O loop never waits. A device id that is reserved (a service account:
    closing its connections would stop Fairway) or not registered is never quarantined.
    """

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.watch = QuarantineWatch(
            settings.quarantine_refusals, settings.quarantine_window_s, settings.device_cache_size
        )
        # Used on the worker thread only.
        self.connected = ConnectedCheck(
            lambda device: bool(
                management.connections_of(settings.rabbitmq_mgmt_url, settings.vhost, device)
            ),
            settings.device_cache_size,
        )
        self.closes = CallBudget(CLOSES_PER_S, CLOSES_BURST)  # the worker's
        url = settings.rabbitmq_mgmt_url
        self.sweep = Sweep(
            CallBudget(SWEEP_CALLS_PER_S, SWEEP_CALLS_BURST),
            lambda: management.connected_users(url, settings.vhost),
            lambda user: management.close_user_connections(url, user, "device quarantined"),
            settings.vhost,
        )
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="quarantine")
        self._queued: set[str] = set()  # devices with an action waiting on the worker
        self._sweep: dict[str, float] = {}  # device -> until when its reconnects are cut
        self._sweep_lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="quarantine-sweep")
        self._sweeper.daemon = True
        self._sweeper.start()

    def refused_over_budget(self, device: str | None, reason: Reason, units: int = 1) -> None:
        """A refusal of ``device`` beyond its budget, costing ``units`` (its readings, or
        one per KiB of its body if more); acts when the watch says so. Only refusals of
        what the device sent count (:data:`COUNTED`)."""
        if not device or reason not in COUNTED:
            return
        if not self.watch.over_budget(device, time.monotonic(), units):
            return
        if device in self._queued:
            return
        self._queued.add(device)
        self._worker.submit(self._act, device)

    def _act(self, device: str) -> None:
        try:
            self.act(device, time.time())
        except Exception:  # the next refusals beyond budget try again
            log.warning("quarantine of %s failed", device, exc_info=True)
        finally:
            self._queued.discard(device)

    def act(self, device: str, now: float) -> quarantine.Quarantine | None:
        """Quarantine ``device`` (or, if it already is, close its connections again);
        the record imposed by this call, if any."""
        if is_reserved_id(device) or not is_valid_id(device):
            return None
        found = registry.find_devices(self.db, [device])[device]
        if found is None:
            return None
        s = self.settings
        last = quarantine.get(self.db, device)
        held = last if last is not None and last.holds(now) else None
        if (
            held is None
            and last is not None
            and last.lifted
            and now - last.until < s.quarantine_window_s
        ):
            # Lifted lately: what it queued before the lift is still refused at the pace,
            # with the device connected again. A new offence needs a whole window after.
            return None
        if held is None and not self.connected(device, time.monotonic()):
            # Not connected: these refusals are what it queued before (a quarantine that
            # just expired, or was lifted, drains its backlog at the pace): no new offence.
            # Or not asked now (the budget of calls is spent): a later refusal asks again.
            return None
        record = None
        if held is None:
            record = quarantine.impose(
                self.db, device, found.tenant, now, s.quarantine_s, s.quarantine_max_s, REASON
            )
        swept = False
        if record is not None:
            with self._sweep_lock:
                if len(self._sweep) < SWEEP_MAX_DEVICES:
                    self._sweep[device] = time.monotonic() + min(SWEEP_FOR_S, s.quarantine_s)
                    swept = True
                metrics.QUARANTINE_SWEPT.set(len(self._sweep))
            metrics.DEVICES_QUARANTINED.labels(found.tenant).inc()
            log.warning(
                "device quarantined: refused beyond its budget",
                extra={
                    "device": device,
                    "tenant": found.tenant,
                    "until": record.until,
                    "offences": record.offences,
                },
            )
        elif held is None:
            return None  # another relay imposed it just now, and closes the connections
        else:
            with self._sweep_lock:
                if device in self._sweep:
                    return None  # this relay's sweep closes it within its turn
        if record is not None and not swept:
            # Nothing else would close it (the sweep is full): its one close is made
            # whatever the budget; quarantines are imposed once per device and period.
            self.closes.owed("close")
        elif not self.closes.take("close", time.monotonic()):
            # No call left: a new quarantine is in the sweep (closed at its turn); a held
            # one is closed again at a later refusal beyond budget.
            return record
        try:
            # At once (connection tracking): a reconnect admitted by the broker's auth
            # cache is a second old when this runs again.
            management.close_user_connections(s.rabbitmq_mgmt_url, device, "device quarantined")
            metrics.QUARANTINE_CLOSES.labels("closed").inc()
        except Exception:  # the quarantine holds: its logins are refused
            metrics.QUARANTINE_CLOSES.labels("failed").inc()
            log.warning("could not close connections of %s", device, exc_info=True)
        return record

    def _sweep_loop(self) -> None:
        """Close the connections of devices quarantined lately, every ``SWEEP_S`` within
        the budget (:class:`Sweep`); once a second their records are read again, and a
        lifted device is let be."""
        checked = 0.0
        while not self._stop.wait(SWEEP_S):
            now = time.monotonic()
            with self._sweep_lock:
                for device in [d for d, until in self._sweep.items() if until <= now]:
                    del self._sweep[device]
                devices = list(self._sweep)
                metrics.QUARANTINE_SWEPT.set(len(devices))
            if devices and now - checked >= LIFT_CHECK_S:
                checked = now
                devices = self._still_held(devices)
            if not devices:
                continue
            try:
                self.sweep.run(devices, time.monotonic())
            except Exception:  # the list failed: the next pass tries again
                log.debug("sweep failed", exc_info=True)

    def _still_held(self, devices: list[str]) -> list[str]:
        """Those of ``devices`` whose quarantine still holds; the others leave the sweep."""
        try:
            records = quarantine.find_many(self.db, devices)
        except Exception:  # the database is away: keep sweeping, look again later
            log.debug("sweep could not read quarantines", exc_info=True)
            return devices
        now = time.time()
        held = [d for d in devices if d in records and records[d].holds(now)]
        with self._sweep_lock:
            for device in set(devices) - set(held):
                self._sweep.pop(device, None)
        return held

    def close(self) -> None:
        """Stop the worker and the sweeper (actions not started are dropped)."""
        self._stop.set()
        self._worker.shutdown(wait=False, cancel_futures=True)
