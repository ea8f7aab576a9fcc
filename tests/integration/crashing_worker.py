"""A Celery app for tests only: Fairway's own app, whose report task kills its pool
process (``os._exit(1)``, as the kernel's OOM killer would) for device ``CRASH_DEVICE``,
and takes ``SLOW_S`` seconds longer for device ``SLOW_DEVICE`` (a long report); a job
whose id starts with ``FLAKY_START`` meets a lost database connection on its first
start check, and a report of device ``FLAKY_DEVICE`` on its first ``FLAKY_TIMES`` runs;
a job whose id starts with ``FLAKY_STATE`` meets it on its first ``FLAKY_TIMES`` stores
of ``STARTED`` (in the result backend, as Celery stores it before the job runs).

Started by a test with ``celery -A tests.integration.crashing_worker worker``
(:func:`fairway.devtools.celery_workers.start` with ``app=``); production workers never
import it. Only the report's computation is replaced: delivery counting, the quota
release and the result store are the production ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pymongo.errors import AutoReconnect

import tasks
import tasks.jobs as jobs
from fairway.storage import job_dispatch
from tasks.result_backend import RetryingMongoBackend

CRASH_DEVICE = "crash-me"
SLOW_DEVICE = "slow-one"
SLOW_S = 3.0
FLAKY_START = "flaky-start-"
FLAKY_DEVICE, FLAKY_TIMES = "flaky-one", 3
FLAKY_STATE = "flaky-state-"
_flaky_runs: list[int] = []

_build_report = jobs.build_report


def _crashing_build_report(db: Any, tenant: str, params: Any, *args: Any, **kwargs: Any) -> Any:
    if params.device == CRASH_DEVICE:
        os._exit(1)
    if params.device == SLOW_DEVICE:
        time.sleep(SLOW_S)
    if params.device == FLAKY_DEVICE and len(_flaky_runs) < FLAKY_TIMES:
        _flaky_runs.append(1)
        raise AutoReconnect("connection lost while reading (test)")
    return _build_report(db, tenant, params, *args, **kwargs)


_start = job_dispatch.start
_flaked: set[str] = set()


def _flaky_start(db: Any, job_id: str, n: int) -> bool:
    if job_id.startswith(FLAKY_START) and job_id not in _flaked:
        _flaked.add(job_id)
        raise AutoReconnect("connection lost on the start check (test)")
    return _start(db, job_id, n)


_store_result = RetryingMongoBackend._store_result
_failed_stores: dict[str, int] = {}


def _flaky_store_result(
    self: RetryingMongoBackend, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any
) -> Any:
    if task_id.startswith(FLAKY_STATE) and state == "STARTED":
        failed = _failed_stores.setdefault(task_id, 0)
        if failed < FLAKY_TIMES:
            _failed_stores[task_id] = failed + 1
            raise AutoReconnect("connection lost storing STARTED (test)")
    return _store_result(self, task_id, result, state, *args, **kwargs)


jobs.build_report = _crashing_build_report  # type: ignore[assignment]
job_dispatch.start = _flaky_start
RetryingMongoBackend._store_result = _flaky_store_result  # type: ignore[method-assign]
app = tasks.app
# A retry waits exactly its backoff (1 s at first), long enough for a test to see it.
app.tasks[jobs.REPORT_TASK].retry_jitter = False
