"""The ``deploy`` mark: every test below this folder checks the deployment files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.testhosts import TestNetwork

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test below this folder ``deploy``."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.deploy)


@pytest.fixture(scope="session")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNetwork]:
    """The test hosts' network (see tests/deploy/testhosts.py); hosts are added by tests."""
    with TestNetwork(tmp_path_factory.mktemp("testhosts")) as net:
        yield net
