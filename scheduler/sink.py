"""Where the scheduler's batches go: MongoDB, or nowhere (for benchmarks).

A sink's ``write`` either returns a :class:`WriteOutcome` (every message is then
stored, a duplicate, or refused for good) or raises: an exception means *nothing*
is known to be durable, and the scheduler retries the whole batch after a backoff.
Retrying is safe because writes are idempotent (``_id`` from tenant, device and
message id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from fairway.kernel.contract import to_document
from fairway.storage import mongo
from scheduler import metrics

# Non-duplicate per-document errors are retried this many times before the message
# is refused (dead-lettered to ``rejected``), so one bad document cannot wedge a queue.
MAX_DOCUMENT_ATTEMPTS = 3


@dataclass
class WriteOutcome:
    """Per-batch result, by index into the batch."""

    stored: int = 0
    duplicates: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


class Sink(Protocol):
    """Durable destination of a batch of tenant-queue message bodies."""

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Write the batch; raise if the outcome is unknown (retry the batch)."""
        ...


class NullSink:
    """Stores nothing; measures the scheduler itself."""

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Report every message as stored."""
        return WriteOutcome(stored=len(bodies))


class MongoSink:
    """``insert_many(ordered=False)`` into ``telemetry``; duplicates are no-ops."""

    def __init__(self, db: Database) -> None:
        self._collection = db[mongo.TELEMETRY]

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Insert the batch; classify duplicates and documents refused for good."""
        outcome = WriteOutcome()
        docs: list[tuple[int, dict]] = []
        for i, body in enumerate(bodies):
            try:
                docs.append((i, to_document(body)))
            except (ValueError, KeyError, TypeError, OverflowError):
                outcome.refused.append(i)  # not the relay's output: never storable
        stored: list[dict] = []
        for attempt in range(1, MAX_DOCUMENT_ATTEMPTS + 1):
            docs = self._insert(docs, outcome, stored)
            if not docs:
                break
            if attempt == MAX_DOCUMENT_ATTEMPTS:
                outcome.refused.extend(i for i, _ in docs)
        outcome.stored = len(stored)
        _observe_lag(stored)
        return outcome

    def _insert(
        self, docs: list[tuple[int, dict]], outcome: WriteOutcome, stored: list[dict]
    ) -> list[tuple[int, dict]]:
        """Insert ``docs``; return those that failed for a reason other than a duplicate."""
        if not docs:
            return []
        try:
            self._collection.insert_many([d for _, d in docs], ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise
            errors = {e["index"]: e["code"] for e in exc.details.get("writeErrors", ())}
            failed = []
            for pos, (i, doc) in enumerate(docs):
                code = errors.get(pos)
                if code is None:
                    stored.append(doc)
                elif code == mongo.DUPLICATE_KEY:
                    outcome.duplicates.append(i)
                else:
                    failed.append((i, doc))
            return failed
        stored.extend(d for _, d in docs)
        return []


def _observe_lag(docs: list[dict]) -> None:
    """Relay receipt to durable write, per tenant."""
    now = time.time()
    for doc in docs:
        metrics.SCHED_LAG_SECONDS.labels(doc["tenant"]).observe(now - doc["received"].timestamp())
