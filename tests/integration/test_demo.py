"""``fairway demo`` (what ``make demo`` runs): its prerequisites are checked before it
prints or starts anything, and the short run still shows readings landing. The whole
product, in a browser, is tested in test_browser.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fairway.storage import mongo
from tests.harness import ROOT, Pipeline


def _demo(
    pipeline: Pipeline, args: list[str], timeout: float, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fairway", "demo", *args],
        cwd=ROOT,
        env={**os.environ, **pipeline.settings.environ(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_demo_checks_its_prerequisites_before_anything(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _demo(
            pipeline,
            ["--logs", str(logs)],
            120,
            FAIRWAY_SECRET_KEY="too-short",
            FAIRWAY_WEB_PORT=str(port),
            FAIRWAY_RABBITMQ_MGMT_URL="http://guest:guest@127.0.0.1:1",
        )
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""  # no dashboard URL, no credentials
    problems = [line for line in run.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3, run.stderr
    assert "FAIRWAY_SECRET_KEY" in problems[0]
    assert f"port {port}" in problems[1] and "FAIRWAY_WEB_PORT" in problems[1]
    assert "management API" in problems[2]
    # Nothing was provisioned or started.
    assert pipeline.db[mongo.TENANTS].count_documents({}) == 0
    assert not logs.exists()


def test_the_short_run_still_shows_readings_landing(pipeline: Pipeline) -> None:
    run = _demo(pipeline, ["--short", "--duration", "2"], 300)
    assert run.returncode == 0, run.stdout + run.stderr
    landed = [line for line in run.stdout.splitlines() if "new readings stored" in line]
    assert [line.split(":")[0] for line in landed] == ["sim01", "sim02", "sim03"]
    assert all(int(line.split()[1]) > 0 for line in landed), run.stdout
    assert pipeline.stored(tenant="sim01") > 0
