"""Every failed job answers a stable reason code, also after Celery's result backend."""

from __future__ import annotations

from typing import Any

import pytest
from billiard.exceptions import TimeLimitExceeded
from celery import Celery
from celery.exceptions import BackendStoreError, SoftTimeLimitExceeded
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from fairway.domain.job_params import JOB_FAILURE_REASONS, JobFailed
from web.jobs import failure_message, failure_reason


def _stored(exc: BaseException) -> Any:
    """``exc`` as a JSON result backend stores it and gives it back."""
    backend = Celery("t", backend="cache+memory://").backend
    backend.serializer = "json"
    return backend.exception_to_python(backend.prepare_exception(exc, "json"))


def test_a_job_failed_keeps_message_and_reason_through_the_backend() -> None:
    back = _stored(JobFailed("choose one device", "job_too_large"))
    assert isinstance(back, JobFailed)
    assert str(back) == "choose one device" and back.reason == "job_too_large"


def test_a_failure_stored_before_reasons_reads_job_failed() -> None:
    backend = Celery("t", backend="cache+memory://").backend
    old = backend.exception_to_python(
        {
            "exc_type": "JobFailed",
            "exc_module": "fairway.domain.job_params",
            "exc_message": ["the old message"],
        }
    )
    assert isinstance(old, JobFailed)
    assert str(old) == "the old message" and old.reason == "job_failed"


@pytest.mark.parametrize(
    ("exc", "job", "reason"),
    [
        (JobFailed("too big", "job_too_large"), {}, "job_too_large"),
        (JobFailed("died", "worker_lost"), {"failure": {"reason": "worker_lost"}}, "worker_lost"),
        (TimeLimitExceeded(10.0), {}, "time_limit"),
        (AutoReconnect("connection refused"), {}, "database_unavailable"),
        (ServerSelectionTimeoutError("no servers"), {}, "database_unavailable"),
        (
            BackendStoreError("failed to store", state="STARTED", task_id="j"),
            {},
            "database_unavailable",
        ),
        (SoftTimeLimitExceeded(), {}, "time_limit"),
        (ValueError("a defect"), {}, "job_failed"),
    ],
)
def test_every_failure_has_a_known_reason(exc: BaseException, job: dict, reason: str) -> None:
    assert failure_reason(exc, job) == reason
    assert reason in JOB_FAILURE_REASONS


def test_the_database_failure_says_so() -> None:
    assert "database could not be reached" in failure_message(AutoReconnect("refused"))
