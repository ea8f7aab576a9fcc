"""``fairway.rollup``: recompute the rollups the scheduler could not fold itself.

Run by beat every minute on the ``maintenance`` queue. First the device-hours of lost
rollup writers (schedulers killed, or silent for the lease) are marked pending; then
every marked hour that closed more than the grace ago is recomputed from its raw
readings (``fairway.storage.rollups``); last, closed days are compacted into day
documents for long charts (``fairway.storage.rollup_days``). Each run is idempotent:
parts and day documents are only ever replaced by folds of as many or more readings,
so a redelivered or overlapping run computes the same documents.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo.database import Database

from fairway.storage import rollup_days, rollup_writers, rollups


def roll_closed_hours(
    db: Database,
    grace_s: float,
    lease_s: float = 300.0,
    now: datetime | None = None,
    days_per_run: int = rollup_days.DAYS_PER_RUN,
) -> dict[str, int]:
    """Recover lost writers' hours, compute every pending hour ended ``grace_s`` ago, then
    compact closed days into day documents (:func:`fairway.storage.rollup_days.compact`)."""
    now = now or datetime.now(UTC)
    recovered = rollup_writers.recover_lost_writers(db, now, timedelta(seconds=lease_s))
    rolled = rollups.roll_pending(db, now, timedelta(seconds=grace_s))
    return {**recovered, **rolled, **rollup_days.compact(db, now, days_per_run)}
