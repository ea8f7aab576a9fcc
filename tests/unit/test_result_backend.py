"""The result backend retries a lost database connection in pool processes only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.backends import by_url
from celery.exceptions import TimeLimitExceeded
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

import tasks.result_backend as result_backend
from fairway.kernel.settings import Settings
from tasks.celery_app import make_celery


@pytest.fixture
def backend() -> Iterator[result_backend.RetryingMongoBackend]:
    app = make_celery(Settings(mongo_url="mongodb://127.0.0.1:1/fairway"))
    try:
        assert isinstance(app.backend, result_backend.RetryingMongoBackend)
        assert app.backend.always_retry and app.backend.max_retries == result_backend.MAX_RETRIES
        yield app.backend
    finally:
        result_backend._retrying = False
        app.close()


def test_the_main_process_does_not_retry(backend: result_backend.RetryingMongoBackend) -> None:
    assert not backend.exception_safe_to_retry(AutoReconnect("lost"))


def test_a_pool_process_retries_a_lost_connection_only(
    backend: result_backend.RetryingMongoBackend,
) -> None:
    result_backend.retry_in_this_process()
    assert backend.exception_safe_to_retry(AutoReconnect("lost"))
    assert backend.exception_safe_to_retry(ServerSelectionTimeoutError("no server"))
    assert not backend.exception_safe_to_retry(OperationFailure("refused"))


def test_the_url_keeps_the_database_url() -> None:
    url = result_backend.backend_url("mongodb://db:27017/fairway")
    assert url == "tasks.result_backend:RetryingMongoBackend+mongodb://db:27017/fairway"


@pytest.mark.parametrize(
    "mongo_url",
    [
        "mongodb://db:27017/fairway",
        "mongodb://a:27017,b:27017/fairway?replicaSet=rs0&tls=true",
        "mongodb+srv://cluster.example.com/fairway",
    ],
)
def test_celery_reads_this_backend_and_the_same_database_url(mongo_url: str) -> None:
    cls, url = by_url(result_backend.backend_url(mongo_url), Celery("t").loader)
    assert cls is result_backend.RetryingMongoBackend and url == mongo_url


class _Collection:
    """Records each replace's filter; refuses an upsert whose filter misses, like MongoDB."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def replace_one(self, query: dict[str, Any], doc: dict[str, Any], upsert: bool) -> None:
        stored = self.docs.get(query["_id"])
        status = query.get("status", {})
        if stored is not None and (
            stored["status"] in status.get("$nin", ()) or stored["status"] == status.get("$ne")
        ):
            raise DuplicateKeyError("E11000")
        self.docs[query["_id"]] = doc


def test_a_running_state_never_replaces_an_ended_one(
    backend: result_backend.RetryingMongoBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard time limit: the main process stores FAILURE while the killed pool process's
    # last progress store may still reach the database after it.
    collection = _Collection()
    monkeypatch.setattr(type(backend), "collection", collection)
    backend.store_result("job", {"done": 0, "total": 9}, "STARTED")
    backend.mark_as_failure("job", TimeLimitExceeded(1.0))
    backend.store_result("job", {"done": 4, "total": 9}, "PROGRESS")
    assert collection.docs["job"]["status"] == "FAILURE"
    backend.store_result("other", {"done": 4, "total": 9}, "PROGRESS")
    assert collection.docs["other"]["status"] == "PROGRESS"
