"""Start and stop Celery workers as child processes (tests, benchmarks, demo).

A worker is a main process and its pool processes; it runs in its own process
group, so :func:`kill` can crash all of it at once the way a lost machine would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pika

from fairway.amqp.connection import blocking_channel
from fairway.devtools.processes import wait_for
from fairway.kernel.settings import Settings
from tasks.base import CPU, MAINTENANCE

# The source tree: `python -m celery -A tasks` run from there imports this tree's `tasks`.
ROOT = Path(__file__).resolve().parents[2]


def start(
    settings: Settings,
    log_path: Path,
    queues: Sequence[str] = (CPU, MAINTENANCE),
    concurrency: int = 1,
    pool: str = "prefork",
    ready_timeout: float = 60.0,
    app: str = "tasks",
) -> subprocess.Popen[bytes]:
    """Run ``celery -A tasks worker`` with ``settings``; return once it consumes ``queues``.

    ``app``: another module holding the Celery ``app`` (a test's, that wraps a task).
    """
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", ",".join(queues), "--pool", pool, "-c", str(concurrency),
        "-n", f"fairway-{uuid.uuid4().hex[:8]}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    env = {**os.environ, **settings.environ()}
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for(
        lambda: proc.poll() is not None or all(consumers(settings, q) > 0 for q in queues),
        ready_timeout,
        f"celery worker consuming {','.join(queues)} (log {log_path})",
        interval=0.3,
    )
    if proc.poll() is not None:
        raise RuntimeError(f"celery worker exited with {proc.returncode}; see {log_path}")
    return proc


def start_beat(settings: Settings, log_path: Path, schedule_path: Path) -> subprocess.Popen[bytes]:
    """Run ``celery -A tasks beat`` (the retention schedule) with ``settings``."""
    command = [
        sys.executable, "-m", "celery", "-A", "tasks", "beat",
        "--schedule", str(schedule_path), "--loglevel", "INFO",
    ]  # fmt: skip
    env = {**os.environ, **settings.environ()}
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def consumers(settings: Settings, queue: str) -> int:
    """Consumers of a job queue (0 while it does not exist)."""
    with blocking_channel(settings, "fairway-worker-probe") as channel:
        try:
            return int(channel.queue_declare(queue, passive=True).method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """Warm shutdown (SIGTERM: finish the running job), then SIGKILL the group if stuck."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool processes at once: a crash mid-job."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
