"""Per-device token buckets, bounded in number."""

from __future__ import annotations

from cachetools import LRUCache


class DeviceRateLimiter:
    """Allow each device ``rate`` messages per second with bursts up to ``burst``.

    Buckets live in an LRU of ``max_devices`` entries; a device evicted from it
    starts again with a full bucket, which errs on the side of accepting.
    """

    def __init__(self, rate: float, burst: float, max_devices: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: LRUCache[str, list[float]] = LRUCache(maxsize=max_devices)

    def allow(self, device: str, now: float) -> bool:
        """Take one token for ``device`` at time ``now``; False if none is left."""
        bucket = self._buckets.get(device)
        if bucket is None:
            self._buckets[device] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True
