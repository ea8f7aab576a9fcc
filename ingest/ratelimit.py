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
        """Take up to ``want`` whole tokens for ``key``; return how many were granted."""
        bucket = self._tokens(key, now)
        granted = min(want, int(bucket[0])) if bucket[0] >= 1.0 else 0
        bucket[0] -= granted
        return granted


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
