"""Fixtures shared by the whole suite.

Integration tests need the real RabbitMQ and MongoDB-compatible services
(``scripts/services.sh up``, done by ``make test``). A missing service is a test
*failure* with instructions, never a skip: a green run must mean the pipeline was
exercised for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pymongo import MongoClient

from fairway.kernel.settings import Settings
from tests.harness import Pipeline, management

HINT = "start the local services with `scripts/services.sh up` (or run `make test`)"


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings from the environment, checked against live services."""
    settings = Settings.from_env()
    try:
        pika.BlockingConnection(pika.URLParameters(settings.amqp_url)).close()
        management("GET", "overview")
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not reachable at {settings.amqp_url}: {exc!r}; {HINT}")
    try:
        client: MongoClient = MongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000)
        client.admin.command("ping")
        client.close()
    except Exception as exc:
        pytest.fail(f"MongoDB is not reachable at {settings.mongo_url}: {exc!r}; {HINT}")
    return settings


@pytest.fixture
def pipeline(
    base_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    """An isolated vhost + database; tune settings with ``@pytest.mark.settings(...)``."""
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    p = Pipeline(base_settings, tmp_path, **overrides).create()
    try:
        yield p
    finally:
        logs = {role: (tmp_path / f"{role}.log") for role in ("relay", "scheduler")}
        p.destroy()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for role, path in logs.items():
                if path.exists():
                    print(f"--- {role} log (last 40 lines) ---")
                    print("\n".join(path.read_text().splitlines()[-40:]))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    """Remember each phase's report so fixtures can print logs of failed tests."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
