"""The tasks: a report, a CSV export (queue ``cpu``) and retention (queue ``maintenance``).

Each gets its settings and database from :class:`tasks.base.JobTask`,
reports ``PROGRESS`` with ``{"done", "total"}`` and, for user jobs, publishes
``job.<tenant>.<user>`` when it ends (:class:`tasks.celery_app.JobTask`).
Every task is idempotent: a redelivery after a crash computes the same report,
keeps or rewrites the one export file, and deletes what retention had left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from bson.errors import InvalidBSON
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

import tasks.export as export
import tasks.retention as retention
import tasks.rollup as rollup
from fairway.domain.job_params import TIME_LIMIT, TOO_LARGE, ExportParams, JobFailed, ReportParams
from fairway.kernel.settings import Settings
from tasks.base import EXPORT_TASK, REPORT_TASK, RETENTION_TASK, ROLLUP_TASK, JobTask
from tasks.report import TooManyReadings, TooManySeries, build_report


def _is_time_limit(exc: BaseException) -> bool:
    """Whether ``exc`` is Celery's soft time limit, even re-raised by BSON decoding.

    The limit is a signal raised wherever the task is; inside pymongo's decoder it comes
    out as ``InvalidBSON('SoftTimeLimitExceeded()')``, its cause dropped."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return True
    return isinstance(exc, InvalidBSON) and str(exc) == str(SoftTimeLimitExceeded())


@contextmanager
def _explained_failures(kind: str, settings: Settings) -> Iterator[None]:
    """Turn a passed time limit or too large a range into a failure the user can act on."""
    try:
        yield
    except (SoftTimeLimitExceeded, InvalidBSON) as exc:
        if not _is_time_limit(exc):
            raise
        raise JobFailed(
            f"the {kind} ran past its time limit of {settings.report_soft_time_limit_s:g} s "
            "(FAIRWAY_REPORT_SOFT_TIME_LIMIT_S) and was stopped; choose a shorter range or "
            "one device",
            TIME_LIMIT,
        ) from None
    except (TooManyReadings, TooManySeries) as exc:
        raise JobFailed(str(exc), TOO_LARGE) from None


class ReportTask(JobTask):
    """Base of the report task."""

    kind = "report"


class ExportTask(JobTask):
    """Base of the export task."""

    kind = "export"


@shared_task(bind=True, base=ReportTask, name=REPORT_TASK)
def report(
    self: JobTask, tenant: str, user: str, params: dict[str, Any], release: int | None = None
) -> dict[str, Any]:
    """Statistics per metric and time bucket over a tenant's (or a device's) readings.
    ``release``: the fair dispatcher's release number (checked in ``before_start``)."""
    settings = self.settings
    with _explained_failures("report", settings):
        return build_report(
            self.db,
            tenant,
            ReportParams(**params),
            settings.report_max_readings,
            self.progress,
            settings.report_db_share,
            max_series=settings.report_max_series,
        )


@shared_task(bind=True, base=ExportTask, name=EXPORT_TASK)
def export_readings(
    self: JobTask, tenant: str, user: str, params: dict[str, Any], release: int | None = None
) -> dict[str, Any]:
    """Write the readings as CSV to GridFS; the API streams it from there."""
    settings = self.settings
    job_id = self.request.id
    with _explained_failures("export", settings):
        result = export.export_csv(
            self.db,
            job_id,
            tenant,
            ExportParams(**params),
            settings.report_max_readings,
            self.progress,
            settings.report_db_share,
        )
    return {**result, "download": f"/api/jobs/{job_id}/download"}


@shared_task(bind=True, base=JobTask, name=RETENTION_TASK)
def apply_retention(self: JobTask) -> dict[str, Any]:
    """Delete readings past each tenant's retention, and expired jobs with their files."""
    settings = self.settings
    return retention.apply_retention(
        self.db,
        settings.default_retention_days,
        settings.job_ttl_s,
        datetime.now(UTC),
        self.progress,
        settings.retention_max_hours,
    )


@shared_task(bind=True, base=JobTask, name=ROLLUP_TASK)
def roll_up(self: JobTask) -> dict[str, int]:
    """Recompute the rollups of closed hours the scheduler marked pending."""
    settings = self.settings
    return rollup.roll_closed_hours(
        self.db,
        settings.rollup_grace_s,
        settings.rollup_writer_lease_s,
        days_per_run=settings.rollup_days_per_run,
    )
