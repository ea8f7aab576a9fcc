"""The relay's device cache (ingest/registry.py): TTL from the answer, LRU bound."""

from __future__ import annotations

import time
from typing import Any

from fairway.storage.registry import Device
from ingest.registry import MISSING, DeviceRegistry


def registry(ttl_s: float, max_size: int) -> DeviceRegistry:
    return DeviceRegistry(
        None,  # type: ignore[arg-type]  # no database: only the cache is used
        ttl_s=ttl_s,
        max_size=max_size,
        call_soon=lambda f: None,
        call_later=lambda d, f: None,
    )


def device(name: str) -> Device:
    return Device(name, "acme", enabled=True)


def test_an_answer_is_served_until_its_ttl_then_missing(monkeypatch: Any) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cache = registry(ttl_s=30.0, max_size=10)
    cache.remember("d1", device("d1"))
    cache.remember("d2", None)  # "not registered" is an answer too
    now[0] = 129.9
    assert cache.cached("d1") == device("d1")
    assert cache.cached("d2") is None
    assert cache.cached("d3") is MISSING
    now[0] = 130.0
    assert cache.cached("d1") is MISSING and cache.cached("d2") is MISSING
    cache.close()


def test_ttl_zero_caches_nothing() -> None:
    cache = registry(ttl_s=0.0, max_size=10)
    cache.remember("d1", device("d1"))
    assert cache.cached("d1") is MISSING
    cache.close()


def test_the_least_recently_used_goes_beyond_the_bound() -> None:
    cache = registry(ttl_s=60.0, max_size=2)
    cache.remember("a", device("a"))
    cache.remember("b", device("b"))
    assert cache.cached("a") is not MISSING  # a used last
    cache.remember("c", device("c"))  # evicts b
    assert cache.cached("b") is MISSING
    assert cache.cached("a") is not MISSING and cache.cached("c") is not MISSING
    assert len(cache._cache) == 2
    cache.close()
