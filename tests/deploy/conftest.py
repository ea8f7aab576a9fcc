"""The ``deploy`` mark: every test below this folder checks the deployment files."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.testhosts import CACHE, TestNetwork
from tests.deploy.tools import ROOT, run
from tests.harness import sqlite_ferretdb

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test below this folder ``deploy``; leave out the ``hosts_long`` ones
    (make test's time budget) unless ``-m`` names them (``make test-long``)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.deploy)
    if "hosts_long" in (config.option.markexpr or ""):
        return
    long = [item for item in items if item.get_closest_marker("hosts_long")]
    if long:
        config.hook.pytest_deselected(items=long)
        items[:] = [item for item in items if not item.get_closest_marker("hosts_long")]


@pytest.fixture(scope="session")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNetwork]:
    """The test hosts' network (see tests/deploy/testhosts.py); hosts are added by tests."""
    with TestNetwork(tmp_path_factory.mktemp("testhosts")) as net:
        yield net


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of the sources (setuptools writes build/ in place)."""
    source = tmp_path_factory.mktemp("src") / "fairway"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".services", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    out = tmp_path_factory.mktemp("dist")
    result = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        timeout=300,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    assert result.returncode == 0, result.stderr
    (found,) = out.glob("fairway-*.whl")
    return found


@pytest.fixture(scope="session")
def wheelhouse(wheel: Path) -> Path:
    """Wheels of every dependency, for test hosts without PyPI (the fairway role's
    ``fairway_pip_extra_args: [--no-index, --find-links, ...]``). Built once from PyPI per
    set of requirements and Python version, kept beside the base root."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    key = json.dumps([dependencies, sys.version_info[:2]]).encode()
    dest = CACHE / f"wheelhouse-{hashlib.sha256(key).hexdigest()[:12]}"
    if not (dest / ".complete").exists():
        building = dest.with_name(dest.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        result = run(
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(building), str(wheel)],
            timeout=900,
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        for own in building.glob("fairway-*.whl"):
            own.unlink()  # the role uploads the wheel under test itself
        (building / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        building.rename(dest)
    return dest


@pytest.fixture(scope="session")
def private_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mongodb://127.0.0.1:<port>/``: a FerretDB (on SQLite) of the host tests' own, so
    that a test host's processes, all creating their collections at once at start, never
    load the FerretDB other engineers' tests share."""
    with sqlite_ferretdb(tmp_path_factory.mktemp("ferretdb")) as (url, _):
        yield url
