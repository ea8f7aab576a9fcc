"""Celery's MongoDB result backend, riding out a lost database connection in jobs.

Celery stores a job's ``STARTED`` state before the job runs. Stock, a store that meets
a lost connection raises inside Celery's tracer: the delivery ends as an internal error
and is acked, so a database outage longer than pymongo's server selection timeout lost
the jobs that started during it (their ``FAILURE`` could not be stored either).

Here a pool process retries every store on :class:`~pymongo.errors.AutoReconnect`
(which covers server selection timeouts) with Celery's own backoff
(``result_backend_always_retry``), bounded by :data:`MAX_RETRIES` and, before that, by
the job's time limits: the job waits for the database instead of being lost. The
worker's main process does not retry: it stores only what its pool could not (a hard
time limit, a lost pool process) and must not stall its event loop, which also serves
the broker's heartbeats and the fair dispatcher.

A state stored once a job has ended (``SUCCESS``, ``FAILURE``, ``REVOKED``) is never
replaced by a running one (``STARTED``, ``PROGRESS``, ``RETRY``): on a hard time limit
the main process stores ``FAILURE`` while the pool process, killed only after, may
still have a progress store in flight, and the job would show ``PROGRESS`` forever.
"""

from __future__ import annotations

from typing import Any

from bson.errors import InvalidDocument
from celery import states
from celery.backends.mongodb import MongoBackend
from kombu.exceptions import EncodeError
from pymongo.errors import AutoReconnect, DuplicateKeyError

MAX_RETRIES = 12  # each up to 30 s (server selection): beyond the jobs' time limits
BASE_SLEEP_MS = 200
MAX_SLEEP_MS = 5_000
BACKEND = f"{__name__}:RetryingMongoBackend"
ENDED = sorted(states.READY_STATES)

_retrying = False  # set in pool processes (worker_process_init)


def retry_in_this_process() -> None:
    """Let this process's stores retry a lost connection (call in pool processes)."""
    global _retrying
    _retrying = True


def backend_url(mongo_url: str) -> str:
    """Celery's ``result_backend`` for ``mongo_url`` with this backend's class."""
    return f"{BACKEND}+{mongo_url}"


def backend_settings() -> dict[str, Any]:
    """The Celery settings of the retries (they act only where this backend allows)."""
    return {
        "result_backend_always_retry": True,
        "result_backend_max_retries": MAX_RETRIES,
        "result_backend_base_sleep_between_retries_ms": BASE_SLEEP_MS,
        "result_backend_max_sleep_between_retries_ms": MAX_SLEEP_MS,
    }


class RetryingMongoBackend(MongoBackend):
    """:class:`MongoBackend` whose stores retry a lost connection in pool processes."""

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        """A lost connection, in a pool process: storing a state again is idempotent."""
        return _retrying and isinstance(exc, AutoReconnect)

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store as Celery does; a running state only while the job has not ended (the
        check is the write's filter, so it holds whichever store the server runs last)."""
        if state in states.READY_STATES:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(
            result=self.encode(result),
            state=state,
            traceback=traceback,
            request=request,
            format_date=False,
        )
        meta["_id"] = task_id
        try:
            self.collection.replace_one(
                {"_id": task_id, "status": {"$nin": ENDED}}, meta, upsert=True
            )
        except DuplicateKeyError:
            pass  # the job has ended (or its first store raced in): a progress lost is harmless
        except InvalidDocument as exc:
            raise EncodeError(exc) from exc
        return result
