"""Login rates per client address and per user, checked before any password check.

A password check is argon2 (64 MiB, several threads, ~0.2 s of CPU), and even a refused
login costs the throttle records a database round trip. Two token buckets per web
process bound what one party can make the host spend (issue 10, login and session
floods):

* per client address, one token per attempt whatever its outcome, taken first: a
  stranger hammering ``/api/login`` from one address is refused from memory, with no
  database read and no hash;
* per user, one token per *successful* login, checked before the password check and
  taken only when the password was right: a user (or a script holding its password)
  cannot mint sessions as fast as it can ask, and a stranger who does not know the
  password cannot spend the user's tokens.

Refusals answer 429 ``login_rate`` with ``Retry-After``. The address is Flask's
``remote_addr``: the peer, or the client named by ``X-Forwarded-For`` when
``FAIRWAY_PROXY_HOPS`` trusts that many proxies (ProxyFix). Buckets are LRU-bounded; an
evicted key starts with a full bucket.
"""

from __future__ import annotations

import math
import os
import threading
import time

from ingest.ratelimit import RateLimiter

MAX_KEYS = 100_000  # addresses and users remembered per web process


class LoginRate:
    """The two buckets, thread-safe."""

    def __init__(
        self, addr_rate: float, addr_burst: float, user_rate: float, user_burst: float
    ) -> None:
        self.addresses = RateLimiter(addr_rate, addr_burst, MAX_KEYS)
        self.users = RateLimiter(user_rate, user_burst, MAX_KEYS)
        self._lock = threading.Lock()

    def address_wait(self, address: str) -> float:
        """Take the address's token for this attempt; 0, or the seconds until one is left."""
        with self._lock:
            if self.addresses.allow(address, time.monotonic()):
                return 0.0
            return _wait(self.addresses, address)

    def user_wait(self, user_id: str) -> float:
        """0 if the user may log in once more now (nothing taken), else seconds to wait."""
        with self._lock:
            if self.users.peek(user_id, time.monotonic()) >= 1.0:
                return 0.0
            return _wait(self.users, user_id)

    def user_succeeded(self, user_id: str) -> None:
        """Spend a token of the user's bucket on a successful login."""
        with self._lock:
            self.users.allow(user_id, time.monotonic())


def _wait(limiter: RateLimiter, key: str) -> float:
    left = limiter.peek(key, time.monotonic())
    return max(1.0, math.ceil((1.0 - left) / limiter.rate))


def password_checks(configured: int) -> int:
    """Password checks at once per web process: the setting, or for 0 half the host's
    cores, at least 1 (argon2 runs several threads per check)."""
    return configured or max(1, (os.cpu_count() or 2) // 2)
