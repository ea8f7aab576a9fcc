"""``fairway.rollup``: recompute the rollups of closed hours marked pending.

Run by beat every minute on the ``maintenance`` queue. Each run is idempotent: it
replaces rollups by a fold of the raw readings (``fairway.storage.rollups``), so a
redelivered or overlapping run computes the same documents.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo.database import Database

from fairway.storage import rollups


def roll_closed_hours(db: Database, grace_s: float, now: datetime | None = None) -> dict[str, int]:
    """Compute every pending hour that ended more than ``grace_s`` ago."""
    return rollups.roll_pending(db, now or datetime.now(UTC), timedelta(seconds=grace_s))
