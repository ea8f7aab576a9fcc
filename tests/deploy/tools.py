"""Paths and runners shared by the deployment checks (no fixtures: plain helpers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command-line tool from the project's virtualenv; a missing one fails the test."""
    path = VENV_BIN / name
    assert path.exists(), f"{name} is not installed in {VENV_BIN}: run `make venv` (dev extra)"
    return str(path)


def run(
    args: list[str], cwd: Path = ROOT, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command with the virtualenv first on PATH; capture its output as text."""
    environ = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(
        args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )
