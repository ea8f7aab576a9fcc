"""Token buckets per key (device, tenant), bounded in number.

A token is one reading: a device batch of ten readings costs ten, whether it is
accepted (:meth:`RateLimiter.take`) or refused whole (:meth:`RefusalBudget.spent`).
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """Allow each key ``rate`` events per second with bursts up to ``burst``.

    Buckets live in an LRU of ``max_keys`` entries; a key evicted from it starts again
    with a full bucket, which errs on the side of accepting.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        # An OrderedDict used directly (least recently used first): the relay takes a
        # bucket per delivery, and cachetools' LRUCache costs ~1 us more per look-up.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def _tokens(self, key: str, now: float) -> list[float]:
        """``key``'s bucket ``[tokens, now]``, refilled up to ``now``."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.burst, now]
        else:
            buckets.move_to_end(key)
            if now > bucket[1]:  # never back in time: an earlier arrival takes what is left
                tokens = bucket[0] + (now - bucket[1]) * self.rate
                bucket[0] = tokens if tokens < self.burst else self.burst
                bucket[1] = now
        return bucket

    def peek(self, key: str, now: float) -> float:
        """The tokens ``key`` has at time ``now`` (nothing taken)."""
        return self._tokens(key, now)[0]

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens for ``key`` at time ``now``; False if not one is left.

        A cost above what is left overdraws the bucket (it refills from below zero),
        so something costing more than the burst is still allowed once in a while and
        the long-run rate holds.
        """
        bucket = self._tokens(key, now)
        if bucket[0] < 1.0:
            return False
        bucket[0] -= cost
        return True

    def take(self, key: str, now: float, want: int) -> int:
        """Take up to ``want`` whole tokens for ``key``; return how many were granted.
        ``want`` must be an int (a count of readings): the shortcut below relies on it."""
        bucket = self._tokens(key, now)
        tokens = bucket[0]
        # min(want, int(tokens)) without the two calls: ``want`` is whole, so
        # ``want <= tokens`` means ``want <= int(tokens)`` (the usual case, every delivery).
        if tokens < 1.0:
            return 0
        granted = want if want <= tokens else int(tokens)
        bucket[0] = tokens - granted
        return granted

    def give_back(self, key: str, count: int) -> None:
        """Return ``count`` tokens taken for something refused after all (up to the burst)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            tokens = bucket[0] + count
            bucket[0] = tokens if tokens < self.burst else self.burst


class RefusalBudget:
    """How many refusals of one device, and of one tenant, are kept in ``rejected``.

    The device is the one the routing key names, which the broker's topic permission
    ties to the publishing device (a device cannot spend another's budget); refusals
    with no device id (only service accounts can publish such keys) share one bucket.
    The tenant is the device's (after the registry look-up) or, for refusals of the
    contract (size, JSON, schema, clock), decided before it, the tenant whose
    ``ingest.<tenant>`` the message came from; what reaches the shared ``ingest`` has no
    tenant and is bounded per device only.
    """

    def __init__(
        self,
        device_rate: float,
        device_burst: float,
        tenant_rate: float,
        tenant_burst: float,
        max_keys: int,
    ) -> None:
        self.devices = RateLimiter(device_rate, device_burst, max_keys)
        self.tenants = RateLimiter(tenant_rate, tenant_burst, max_keys)

    def spent(
        self, device: str | None, tenant: str | None, now: float, readings: int = 1
    ) -> str | None:
        """Take a refusal of ``readings`` readings from the device's and the tenant's
        budget: None if both allow it, else which one is spent (:data:`DEVICE_SPENT`,
        :data:`TENANT_SPENT`)."""
        if not self.devices.allow(device or "_", now, readings):
            return DEVICE_SPENT
        if tenant is not None and not self.tenants.allow(tenant, now, readings):
            return TENANT_SPENT
        return None

    def take(
        self, device: str | None, tenant: str | None, now: float, readings: int
    ) -> tuple[int, int]:
        """Refusals of ``readings`` readings at once: how many the budgets keep (the
        first ones), and how many of the rest are beyond the device's own budget. The
        same tokens as that many :meth:`spent` calls of one reading each."""
        granted = self.devices.take(device or "_", now, readings)
        kept = self.tenants.take(tenant, now, granted) if tenant is not None else granted
        return kept, readings - granted


DEVICE_SPENT, TENANT_SPENT = "device", "tenant"


class Pacer(RateLimiter):
    """Spread events of one key to ``rate`` per second: how long each must wait.

    Unlike :meth:`RateLimiter.allow` nothing is refused: every event takes a token, the
    bucket goes below zero, and the answer is how long until that token would have
    refilled. The caller bounds the debt (the relay: a queue's prefetch window).
    """

    def delay(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens of ``key``; seconds to wait before acting on it (0: now)."""
        bucket = self._tokens(key, now)
        bucket[0] -= cost
        return 0.0 if bucket[0] >= 0.0 else -bucket[0] / self.rate


class TenantRates:
    """Each tenant's accepted readings per second: a token bucket at the tenant's plan.

    A tenant's plan is its record's ``max_rate``/``max_burst`` (:meth:`plan`, from the
    tenant watch), else ``default_rate``/``default_burst``; a rate of 0 is unlimited and
    costs one dict look-up per delivery. A burst of 0 (unset) is two seconds of the
    rate, at least ``min_burst`` (a full device batch). Buckets live in an LRU of
    ``max_keys`` like :class:`RateLimiter`'s; a changed plan starts a full bucket.

    A bucket that ran dry is closed (:meth:`gate_closed`) below its opening level: a
    full batch (``min_burst``), at most its burst and at most :data:`OPENING_S` of its
    rate (at least one token).
    """

    def __init__(
        self, default_rate: float, default_burst: float, min_burst: float, max_keys: int
    ) -> None:
        self.default_rate, self.default_burst = default_rate, default_burst
        self.min_burst, self.max_keys = min_burst, max_keys
        self._plans: dict[str, tuple[float, float]] = {}  # tenant -> (rate, burst) if its own
        self._buckets: OrderedDict[str, _PlanBucket] = OrderedDict()  # least recently used first

    def burst_of(self, rate: float, burst: float) -> float:
        """The burst in effect for ``rate`` when ``burst`` is 0 (unset): two seconds' worth."""
        return burst if burst > 0 else max(2.0 * rate, self.min_burst)

    def opening_of(self, rate: float, burst: float) -> float:
        """The tokens a dry bucket of ``rate``/``burst`` (in effect) needs to be read again:
        a full batch, at most the burst and at most :data:`OPENING_S` of the rate, so
        what it refuses that the plain bucket would have accepted is bounded by that
        much of the plan."""
        return min(self.min_burst, burst, max(1.0, rate * OPENING_S))

    def plan(self, tenant: str, rate: float | None, burst: float | None) -> bool:
        """Set ``tenant``'s own plan (None: the defaults); its bucket restarts full if
        changed. Whether it changed."""
        if rate is None and burst is None:
            changed = self._plans.pop(tenant, None) is not None
        else:
            own = (
                self.default_rate if rate is None else rate,
                self.default_burst if burst is None else burst,
            )
            changed = self._plans.get(tenant) != own
            self._plans[tenant] = own
        if changed:
            self._buckets.pop(tenant, None)
        return changed

    def forget(self, tenant: str) -> None:
        """Drop ``tenant``'s plan and bucket (the tenant was removed)."""
        self._plans.pop(tenant, None)
        self._buckets.pop(tenant, None)

    def rate_of(self, tenant: str) -> float:
        """The rate in effect for ``tenant`` (0: unlimited)."""
        own = self._plans.get(tenant)
        return self.default_rate if own is None else own[0]

    def gate_closed(self, tenant: str, now: float) -> bool:
        """Whether ``tenant``'s messages are refused before they are read: its bucket
        holds no whole token at ``now``, or it is dry and holds fewer tokens than its
        opening level (:meth:`opening_of`). Nothing is taken, but it marks the bucket
        dry when it finds no whole token. Dry: :meth:`take` granted fewer than asked,
        or this found none; until the bucket refills to its burst. Unlimited, or no
        bucket yet (full): never closed."""
        bucket = self._buckets.get(tenant)
        if bucket is None:
            return False
        # Never back in time: a delivery released from a registry look-up is gated at
        # its arrival, which may precede what later arrivals already took.
        elapsed = now - bucket.last
        tokens = bucket.tokens + elapsed * bucket.rate if elapsed > 0.0 else bucket.tokens
        if tokens < 1.0:
            bucket.dry = True
            return True
        if bucket.dry:
            if tokens < bucket.opening:
                return True
            if tokens >= bucket.burst:
                bucket.dry = False  # refilled whole: the flood is over
        return False

    def take(self, tenant: str, now: float, want: int) -> int:
        """Take up to ``want`` tokens (readings) of ``tenant``'s bucket; how many were
        granted (fewer than ``want``: the bucket is dry, :meth:`gate_closed`)."""
        bucket = self._buckets.get(tenant)
        if bucket is None:
            own = self._plans.get(tenant)
            rate, burst = (self.default_rate, self.default_burst) if own is None else own
            if rate <= 0:
                return want
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            burst = self.burst_of(rate, burst)
            bucket = self._buckets[tenant] = _PlanBucket(
                now, rate, burst, self.opening_of(rate, burst)
            )
        else:
            self._buckets.move_to_end(tenant)
            if now > bucket.last:  # never back in time (see gate_closed)
                tokens = bucket.tokens + (now - bucket.last) * bucket.rate
                bucket.tokens = tokens if tokens < bucket.burst else bucket.burst
                bucket.last = now
        granted = min(want, int(bucket.tokens)) if bucket.tokens >= 1.0 else 0
        bucket.tokens -= granted
        if granted < want:
            bucket.dry = True  # closed below its opening level until it refills to its burst
        return granted


OPENING_S = 1.0
"""Seconds of a tenant's plan rate a dry bucket needs before its messages are read again
(at most a full batch and the burst): bounds the readings refused that the plain token
bucket would have accepted to about this much of the plan after each dry spell."""


class _PlanBucket:
    """One tenant's bucket: its tokens at ``last``, its plan, and whether it ran dry."""

    __slots__ = ("burst", "dry", "last", "opening", "rate", "tokens")

    def __init__(self, now: float, rate: float, burst: float, opening: float) -> None:
        self.tokens, self.last, self.rate, self.burst = burst, now, rate, burst
        self.opening = opening
        self.dry = False
