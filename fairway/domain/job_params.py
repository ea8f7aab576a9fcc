"""Jobs: parameters parsed and checked once, by the API (400 on bad input) and the task.

Times are RFC 3339 strings with an offset or epoch seconds (as in the message
contract); they travel to the worker as epoch seconds, so the task message is
plain JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fairway.kernel.contract import parse_ts
from fairway.kernel.ids import is_valid_id
from fairway.kernel.reasons import Rejection
from fairway.kernel.settings import Settings
from fairway.storage.job_records import WORKER_LOST  # its worker process died under it too often

DEFAULT_Z = 3.0
MIN_Z, MAX_Z = 1.0, 10.0
MAX_BUCKET_S = 366 * 24 * 3600  # a year (and a day): larger buckets say nothing more
# A report's ``detail``: every statistic from the readings, or count/min/max/mean from rollups.
FULL, SUMMARY = "full", "summary"
SUMMARY_STEPS = (3600, 60)  # rollup resolutions: hourly (``rollups``), per minute


def summary_step(start: float, end: float, bucket_s: int) -> int | None:
    """The rollup resolution (3600 or 60 s) a summary of ``[start, end)`` in buckets of
    ``bucket_s`` can be computed at, or None: the bucket must be a multiple of it and both
    ends of the range on its boundaries (UTC)."""
    for step in SUMMARY_STEPS:
        if bucket_s % step == 0 and start % step == 0 and end % step == 0:
            return step
    return None


@dataclass(frozen=True, slots=True)
class ReportParams:
    """A report over ``[start, end)`` for one device (or every device when None)."""

    device: str | None
    start: float
    end: float
    bucket_s: int
    z: float = DEFAULT_Z
    detail: str = FULL

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the task message and the job record."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExportParams:
    """A CSV export of the readings in ``[start, end)``."""

    device: str | None
    start: float
    end: float

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the task message and the job record."""
        return asdict(self)


def _time(body: dict[str, Any], key: str) -> float:
    if key not in body:
        raise ValueError(f"'{key}' is required: an RFC 3339 time with an offset or epoch seconds")
    try:
        return parse_ts(body[key])
    except Rejection as exc:
        raise ValueError(str(exc.detail).replace("'ts'", f"'{key}'")) from None
    except OverflowError:  # an integer beyond a double, e.g. 10**400
        raise ValueError(f"'{key}' is out of range") from None


def _number(body: dict[str, Any], key: str, low: float, high: float, default: Any = None) -> float:
    """``body[key]`` as a finite number in ``[low, high]``, else ValueError naming ``key``.

    JSON bodies may hold ``1e999`` (infinity), ``NaN`` and integers beyond a double: each
    is a 400 naming the parameter, never an exception deeper down.
    """
    raw = body.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"'{key}' must be a number from {low:g} to {high:g}")
    try:
        value = float(raw)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"'{key}' must be a finite number")
    if not low <= value <= high:
        raise ValueError(f"'{key}' must be a number from {low:g} to {high:g}")
    return value


def _range(body: dict[str, Any]) -> tuple[str | None, float, float]:
    device = body.get("device")
    if device is not None and not is_valid_id(device):
        raise ValueError("'device' must be a device id, or absent for every device of the tenant")
    start, end = _time(body, "from"), _time(body, "to")
    if end <= start:
        raise ValueError("'to' must be later than 'from'")
    return device, start, end


def parse_report(body: dict[str, Any], settings: Settings) -> ReportParams:
    """Check a report request (``device``?, ``from``, ``to``, ``bucket``, ``z``?, ``detail``?)."""
    device, start, end = _range(body)
    if "bucket" not in body:
        raise ValueError("'bucket' is required: a whole number of seconds")
    raw_bucket = _number(body, "bucket", -math.inf, math.inf)
    if raw_bucket < 1:
        raise ValueError("'bucket' must be at least 1 second")
    if raw_bucket > MAX_BUCKET_S:
        raise ValueError(f"'bucket' must be at most {MAX_BUCKET_S} seconds (a year)")
    if raw_bucket != int(raw_bucket):
        raise ValueError("'bucket' must be a whole number of seconds")
    bucket = int(raw_bucket)
    buckets = math.ceil((end - start) / bucket)
    if buckets > settings.report_max_buckets:
        raise ValueError(
            f"the range holds {buckets} buckets of {bucket} s; at most "
            f"{settings.report_max_buckets}: use a larger bucket or a shorter range"
        )
    z = _number(body, "z", MIN_Z, MAX_Z, DEFAULT_Z)
    detail = body.get("detail", FULL)
    if detail not in (FULL, SUMMARY):
        raise ValueError(
            "'detail' must be 'full' (every statistic, from the readings) or 'summary' "
            "(count, min, max and mean, from the rollups)"
        )
    if detail == SUMMARY and summary_step(start, end, bucket) is None:
        raise ValueError(
            "'detail': 'summary' is computed from hourly or per-minute rollups: the 'bucket' "
            "must be a multiple of 3600 s with 'from' and 'to' on whole UTC hours, or a "
            "multiple of 60 s with 'from' and 'to' on whole minutes; use 'detail': 'full' "
            "for other buckets and ranges"
        )
    return ReportParams(device, start, end, bucket, z, detail)


def parse_export(body: dict[str, Any]) -> ExportParams:
    """Check an export request (``device``?, ``from``, ``to``)."""
    device, start, end = _range(body)
    return ExportParams(device, start, end)


class JobFailed(Exception):
    """A job ended without a result; the message says why and what to change, the
    reason is a stable code (see :data:`JOB_FAILURE_REASONS`).

    Both travel as the exception's arguments: Celery's result backend stores an
    exception as its class and ``args`` (JSON), so an attribute would be lost.
    """

    def __init__(self, message: str, reason: str = "job_failed") -> None:
        super().__init__(message, reason)

    @property
    def message(self) -> str:
        """What the user reads."""
        return str(self.args[0])

    @property
    def reason(self) -> str:
        """The stable code (a failure stored before codes existed reads ``job_failed``)."""
        return str(self.args[1]) if len(self.args) > 1 else "job_failed"

    def __str__(self) -> str:
        return self.message


# Why a job failed, as ``reason`` in ``GET /api/jobs/<id>`` (its ``error`` says it in words).
TIME_LIMIT = "time_limit"  # it ran past its soft or hard time limit
TOO_LARGE = "job_too_large"  # too many readings or series for one job
BAD_PARAMETERS = "bad_parameters"  # a task message the API would have refused
DATABASE_UNAVAILABLE = "database_unavailable"  # the database stayed unreachable
OTHER_FAILURE = "job_failed"  # anything else (a defect: the log has the traceback)
JOB_FAILURE_REASONS = (
    TIME_LIMIT,
    TOO_LARGE,
    BAD_PARAMETERS,
    WORKER_LOST,
    DATABASE_UNAVAILABLE,
    OTHER_FAILURE,
)
