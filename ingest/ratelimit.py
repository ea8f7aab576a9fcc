"""Token buckets per key (device, tenant), bounded in number."""

from __future__ import annotations

from cachetools import LRUCache


class RateLimiter:
    """Allow each key ``rate`` events per second with bursts up to ``burst``.

    Buckets live in an LRU of ``max_keys`` entries; a key evicted from it starts again
    with a full bucket, which errs on the side of accepting.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: LRUCache[str, list[float]] = LRUCache(maxsize=max_keys)

    def allow(self, key: str, now: float) -> bool:
        """Take one token for ``key`` at time ``now``; False if none is left."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True


class RefusalBudget:
    """How many refusals of one device, and of one tenant, are kept in ``rejected``.

    The device is the one the routing key names, which the broker's topic permission
    ties to the publishing device (a device cannot spend another's budget); refusals
    with no device id (only service accounts can publish such keys) share one bucket.
    The tenant is known only after the registry look-up, so refusals of the contract
    (size, JSON, schema, clock) are bounded per device only.
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

    def allow(self, device: str | None, tenant: str | None, now: float) -> bool:
        """Take one refusal from the device's and the tenant's budget; False if spent."""
        if not self.devices.allow(device or "_", now):
            return False
        return tenant is None or self.tenants.allow(tenant, now)
