"""Start and stop Fairway processes as children (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from fairway.settings import Settings


def start(
    command: list[str], settings: Settings, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Run ``python -m fairway <command>`` with ``settings`` in its environment."""
    env = {**os.environ, **settings.environ()}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "fairway", *command],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, wait for a clean exit (SIGKILL after ``timeout``); return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: a crash at an arbitrary point."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
