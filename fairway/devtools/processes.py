"""Start and stop Fairway processes as children (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairway.kernel.settings import Settings


def start(
    command: list[str],
    settings: Settings,
    log_path: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Run ``python -m fairway <command>`` with ``settings`` in its environment.

    ``new_session``: in its own session and process group, so a Ctrl-C in the terminal
    reaches only the parent, which then stops its children in order (the demo).
    """
    env = {**os.environ, **settings.environ()}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "fairway", *command],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
        start_new_session=new_session,
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


def free_port() -> int:
    """An unused TCP port on loopback (for a child's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until truthy and return its value; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
