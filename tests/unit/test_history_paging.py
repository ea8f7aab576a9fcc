"""History paging by hour key (:func:`fairway.storage.telemetry.page_history`) over an
in-memory store: every page walk returns each matching reading exactly once, in
(ts, _id) descending order, across hour edges, shared timestamps, filters and the
probe bound."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fairway.kernel.contract import hour_key
from fairway.storage.telemetry import Cursor, HistoryQuery, floor_hour, page_history

T0 = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)


def reading(i: int, ts: datetime, stream: str = "env") -> dict[str, Any]:
    return {
        "_id": f"a:d:m{i:05d}",
        "hk": hour_key("a", "d", ts),
        "device": "d",
        "stream": stream,
        "msg_id": f"m{i:05d}",
        "ts": ts,
        "values": {"v": i},
    }


class Store:
    """Readings by hour key, counting the probes."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs, self.probes = docs, 0
        self.by_hk: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            self.by_hk.setdefault(doc["hk"], []).append(doc)

    def fetch(self, hk: str) -> list[dict[str, Any]]:
        self.probes += 1
        found = list(self.by_hk.get(hk, ()))
        random.shuffle(found)  # the database returns an hour in no particular order
        return found

    def walk(self, query: HistoryQuery, max_probes: int = 168) -> list[dict[str, Any]]:
        first = min(d["ts"] for d in self.docs)
        last = max(d["ts"] for d in self.docs)
        seen: list[dict[str, Any]] = []
        cursor: Cursor | None = None
        for _ in range(10_000):
            q = dataclasses.replace(query, cursor=cursor)
            page = page_history(q, self.fetch, first, last, max_probes)
            assert len(page.docs) <= query.limit and page.probes <= max_probes
            seen += page.docs
            if page.next_cursor is None:
                return seen
            cursor = Cursor(
                datetime.fromisoformat(page.next_cursor.encode().split("|")[0]),
                page.next_cursor.id,
            )
        raise AssertionError("the walk never ended")


def expected(docs: list[dict[str, Any]], query: HistoryQuery) -> list[str]:
    keep = [d for d in docs if query.keeps(d)]
    return [d["_id"] for d in sorted(keep, key=lambda d: (d["ts"], d["_id"]), reverse=True)]


def edge_readings() -> list[dict[str, Any]]:
    """Readings at and around hour edges, several sharing a timestamp, two streams."""
    docs, i = [], 0
    for hour in (0, 1, 2, 5, 6):  # hours 3 and 4 are empty
        edge = T0 + timedelta(hours=hour)
        for offset in (timedelta(0), timedelta(milliseconds=1), timedelta(minutes=30)):
            for _ in range(3):  # three readings share each timestamp
                docs.append(reading(i, edge + offset, "env" if i % 3 else "power"))
                i += 1
        docs.append(reading(i, edge + timedelta(hours=1) - timedelta(milliseconds=1)))
        i += 1
    return docs


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 100])
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"stream": "env"},
        {"start": T0 + timedelta(hours=1), "end": T0 + timedelta(hours=5)},
        {"start": T0 + timedelta(hours=1, milliseconds=1), "stream": "power"},
        {"end": T0 + timedelta(hours=2, minutes=30)},
    ],
)
def test_paging_never_skips_or_repeats(limit: int, filters: dict[str, Any]) -> None:
    docs = edge_readings()
    store = Store(docs)
    query = HistoryQuery(tenant="a", device="d", limit=limit, **filters)
    assert [d["_id"] for d in store.walk(query)] == expected(docs, query)


def test_a_page_costs_the_hours_it_reads_not_the_store() -> None:
    docs = [reading(i, T0 + timedelta(minutes=i)) for i in range(24 * 60)]  # one a minute
    store = Store(docs)
    page = page_history(
        HistoryQuery(tenant="a", device="d", limit=50), store.fetch, docs[0]["ts"], docs[-1]["ts"]
    )
    assert [d["_id"] for d in page.docs] == [d["_id"] for d in docs[::-1][:50]]
    assert store.probes == 1  # the newest hour alone held 60 readings


def test_probe_bound_returns_a_cursor_that_continues_below_the_gap() -> None:
    old = [reading(i, T0 + timedelta(seconds=i)) for i in range(3)]
    new = [reading(10 + i, T0 + timedelta(days=30, seconds=i)) for i in range(2)]
    store = Store(old + new)
    query = HistoryQuery(tenant="a", device="d", limit=10)
    first = page_history(query, store.fetch, T0, new[-1]["ts"], max_probes=24)
    assert [d["_id"] for d in first.docs] == [d["_id"] for d in new[::-1]]
    assert first.probes == 24 and first.next_cursor is not None
    assert first.next_cursor.id == "" and first.next_cursor.ts == floor_hour(
        new[0]["ts"]
    ) - timedelta(hours=23)
    assert [d["_id"] for d in store.walk(query, max_probes=24)] == expected(old + new, query)


def test_random_timestamps_walk_exactly_once() -> None:
    rng = random.Random(12)
    stamps = [
        T0 + timedelta(milliseconds=rng.randrange(0, 5 * 3600 * 1000, 250)) for _ in range(400)
    ]
    docs = [reading(i, ts, rng.choice(["env", "power"])) for i, ts in enumerate(stamps)]
    store = Store(docs)
    for limit in (1, 9, 50):
        query = HistoryQuery(tenant="a", device="d", limit=limit, stream="env")
        assert [d["_id"] for d in store.walk(query, max_probes=2)] == expected(docs, query)


def test_a_device_without_state_has_no_history() -> None:
    page = page_history(HistoryQuery(tenant="a", device="d", limit=5), Store([]).fetch, None, None)
    assert page.docs == [] and page.next_cursor is None and page.probes == 0
