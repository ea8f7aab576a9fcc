"""A Celery app for tests only: Fairway's own app, whose report task kills its pool
process (``os._exit(1)``, as the kernel's OOM killer would) for device ``CRASH_DEVICE``,
and takes ``SLOW_S`` seconds longer for device ``SLOW_DEVICE`` (a long report).

Started by a test with ``celery -A tests.integration.crashing_worker worker``
(:func:`fairway.devtools.celery_workers.start` with ``app=``); production workers never
import it. Only the report's computation is replaced: delivery counting, the quota
release and the result store are the production ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

import tasks
import tasks.jobs as jobs

CRASH_DEVICE = "crash-me"
SLOW_DEVICE = "slow-one"
SLOW_S = 3.0

_build_report = jobs.build_report


def _crashing_build_report(db: Any, tenant: str, params: Any, *args: Any, **kwargs: Any) -> Any:
    if params.device == CRASH_DEVICE:
        os._exit(1)
    if params.device == SLOW_DEVICE:
        time.sleep(SLOW_S)
    return _build_report(db, tenant, params, *args, **kwargs)


jobs.build_report = _crashing_build_report  # type: ignore[assignment]
app = tasks.app
