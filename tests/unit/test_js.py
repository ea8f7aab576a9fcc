"""The page scripts' pure functions, tested by node's own runner (``node --test``).

The files are plain ``.mjs`` tests in ``tests/js``; a missing ``node`` fails the run,
like every other missing tool (Debian's ``nodejs`` package provides it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

JS_TESTS = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))


@pytest.mark.parametrize("path", JS_TESTS, ids=[p.name for p in JS_TESTS])
def test_node(path: Path) -> None:
    node = shutil.which("node")
    if not node:
        pytest.fail("node missing: install Debian's nodejs (the page scripts' unit tests need it)")
    run = subprocess.run(
        [node, "--test", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
