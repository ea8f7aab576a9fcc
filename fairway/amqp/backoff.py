"""Capped exponential backoff for reconnects and retries."""

from __future__ import annotations


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... ``cap``; reset on success."""

    def __init__(self, base: float = 0.5, cap: float = 10.0) -> None:
        self.base, self.cap, self._n = base, cap, 0

    def next(self) -> float:
        """The next delay."""
        delay = min(self.cap, self.base * 2 ** min(self._n, 32))  # no float overflow
        self._n += 1
        return delay

    def reset(self) -> None:
        """Back to the first delay."""
        self._n = 0
