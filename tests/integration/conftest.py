"""Fixtures of the integration tests, and their ``integration`` mark.

Integration tests need the real RabbitMQ and MongoDB-compatible services
(``scripts/services.sh up``, done by ``make test``). A missing service is a test
*failure* with instructions, never a skip: a green run must mean the pipeline was
exercised for real.

Every test below this folder is marked ``integration`` here, by its path; a test
file does not mark itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pymongo import MongoClient

from fairway.amqp.connection import blocking_channel
from fairway.devtools.processes import free_port
from fairway.kernel.settings import Settings
from tests.harness import LocalNode, Pipeline, management

HERE = Path(__file__).resolve().parent
HINT = "start the local services with `scripts/services.sh up` (or run `make test`)"
# Faster than production so tests need not wait: tenants picked up in 0.5 s, a device
# change seen within 1 s.
TEST_SETTINGS = {"tenant_refresh_s": 0.5, "device_cache_ttl_s": 1.0}
TEST_SECRET_KEY = "fairway-test-secret-key-0123456789"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test below this folder ``integration``; leave the long ``fuzz`` runs out
    unless ``-m`` names them (``pytest -m fuzz``), and the PostgreSQL-backend tests out
    when ``FAIRWAY_FERRETDB_BACKEND=sqlite`` chose the other backend."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
    if os.environ.get("FAIRWAY_FERRETDB_BACKEND") == "sqlite":
        # Chosen, not missing: the PostgreSQL backend's checks (GIN indexes) do not apply.
        postgres_only = [item for item in items if "pg_db" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=postgres_only)
        items[:] = [item for item in items if item not in postgres_only]
    if "fuzz" in (config.option.markexpr or ""):
        return
    long_runs = [item for item in items if item.get_closest_marker("fuzz")]
    if long_runs:
        config.hook.pytest_deselected(items=long_runs)
        items[:] = [item for item in items if not item.get_closest_marker("fuzz")]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings from the environment, checked against live services."""
    settings = Settings.from_env()
    try:
        with blocking_channel(settings, "fairway-tests-check"):
            pass
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
def queue_type() -> str | None:
    """The queue type of a pipeline: as configured, unless a test is parametrised over
    :data:`tests.integration.queue_types.BOTH`."""
    return None


@pytest.fixture
def pipeline(
    base_settings: Settings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    queue_type: str | None,
) -> Iterator[Pipeline]:
    """An isolated vhost + database; tune settings with ``@pytest.mark.settings(...)``."""
    marker = request.node.get_closest_marker("settings")
    overrides = {
        **TEST_SETTINGS,
        "secret_key": base_settings.secret_key or TEST_SECRET_KEY,
        **({"queue_type": queue_type} if queue_type else {}),
        **(marker.kwargs if marker else {}),
    }
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


@contextmanager
def pipeline_on_own_broker(
    base_settings: Settings, tmp_path: Path, **settings: object
) -> Iterator[tuple[Pipeline, LocalNode]]:
    """A pipeline on a RabbitMQ node of its own (the shared configuration, its 60 s auth
    cache included) whose HTTP auth backend is the pipeline's web app's broker-auth port, a
    free one: device logins need neither port 8080 nor its lock. ``settings`` override
    the tests' defaults; devices' snippets name this node's MQTT port."""
    web_port, auth_port = free_port(), free_port()
    node = LocalNode(tmp_path / "rabbitmq")
    node.env["FAIRWAY_BROKER_AUTH_PORT"] = str(auth_port)  # scripts/services.sh's URL
    with node:
        base = Settings.from_env(
            base_settings.environ(), amqp_url=node.amqp_url(), rabbitmq_mgmt_url=node.mgmt_url
        )
        overrides: dict[str, object] = {
            **TEST_SETTINGS,
            "secret_key": base_settings.secret_key or TEST_SECRET_KEY,
            "web_port": web_port,
            "broker_auth_port": auth_port,
            "gateway_port": free_port(),
            "device_mqtt_url": f"mqtt://127.0.0.1:{node.base + 2}",
            **settings,
        }
        with Pipeline(base, tmp_path, mgmt_url=node.mgmt_url, **overrides) as pipeline:
            yield pipeline, node
