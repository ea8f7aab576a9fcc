"""Report offload: web latency while reports run on Celery workers, vs inside the request.

    python -m benchmarks.report_offload [--scale S]

1,000,000 readings (x scale) are inserted directly with ``insert_many``, with their hour
key and a ``rollup_pending`` mark per device-hour (as the scheduler writes them; reports
find device-hours from marks and rollups, never by a scan). The web
app (``web.create_app()`` under waitress with ``fairway web``'s 8 threads) serves a
cheap endpoint, ``GET /api/me``, sampled 20 times a second:

* idle: nothing else runs;
* offloaded: 10 reports over every reading are posted to ``/api/reports`` and run
  on one Celery worker (prefork, ``--worker-processes``, default 1);
* inline: the same 10 reports are computed inside 10 concurrent requests (a
  benchmark-only route calling the same ``build_report``).

Also measured: one report over every reading on the worker (readings per second).
Target: API p99 while reports run within 2x of idle.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import (
    LOGS,
    bench_env,
    emit,
    meta,
    parser,
    percentile,
    poll_until,
    r,
    ratio,
    say,
    scaled,
)
from fairway.devtools.processes import free_port
from fairway.kernel.contract import hour_key, reading_id
from fairway.kernel.settings import Settings
from fairway.storage import accounts, mongo, registry, rollups

START = datetime(2026, 1, 1, tzinfo=UTC)
TENANT, USER, PASSWORD = "bench", "bench-admin", "benchmark-password"
DEVICES = 10
REPORTS = 10
SAMPLE_INTERVAL_S = 0.05


# -- the benchmark's web server (a child process) ---------------------------------------
def serve(port: int) -> None:
    """``fairway web``'s app and waitress settings, plus one route computing a report inline."""
    import waitress
    from flask import request

    from fairway.domain.job_params import parse_report
    from tasks.report import build_report
    from web import create_app, jobs
    from web.database import get_db

    app = create_app()
    if "jobs" not in app.blueprints:  # until web.create_app registers it
        app.register_blueprint(jobs.bp)
    settings: Settings = app.config["FAIRWAY_SETTINGS"]

    @app.post("/bench/inline-report")
    def inline_report() -> dict[str, Any]:
        params = parse_report(request.get_json(), settings)
        return build_report(
            get_db(), TENANT, params, settings.report_max_readings, lambda done, total: None
        )

    waitress.serve(app, host="127.0.0.1", port=port, threads=8)


# -- client side --------------------------------------------------------------------------
class Client:
    """One keep-alive HTTP connection with a bearer token."""

    def __init__(self, port: int, token: str, timeout: float = 900.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; return status and decoded JSON body."""
        payload = None if body is None else json.dumps(body)
        self.conn.request(method, path, payload, self.headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)


def sample_latency(port: int, token: str, until: Callable[[], bool]) -> list[float]:
    """GET /api/me every SAMPLE_INTERVAL_S until ``until()``; latencies in ms.

    Corrected for coordinated omission: a request that takes longer than the interval
    stands for the requests that would have been sent meanwhile, each of which would
    have waited ``elapsed - k * interval`` (without this a stalled server looks fine).
    """
    client = Client(port, token)
    out: list[float] = []
    while not until():
        began = time.perf_counter()
        status, _ = client.call("GET", "/api/me")
        elapsed = time.perf_counter() - began
        assert status == 200, status
        out.append(elapsed * 1000)
        missed = elapsed - SAMPLE_INTERVAL_S
        while missed > 0:
            out.append(missed * 1000)
            missed -= SAMPLE_INTERVAL_S
        time.sleep(max(0.0, SAMPLE_INTERVAL_S - elapsed))
    return out


def summary(latencies: list[float]) -> dict[str, Any]:
    """n, p50, p99 and max in ms."""
    return {
        "n": len(latencies),
        "p50_ms": r(percentile(latencies, 50), 2),
        "p99_ms": r(percentile(latencies, 99), 2),
        "max_ms": r(max(latencies), 2) if latencies else None,
    }


def insert_readings(db: Any, count: int) -> float:
    """``count`` readings over DEVICES devices, one a second; returns the insert rate."""
    began = time.monotonic()
    batch: list[dict[str, Any]] = []
    hours: set[tuple[str, str, datetime]] = set()
    for i in range(count):
        device = f"dev{i % DEVICES}"
        ts = START + timedelta(seconds=i)
        hours.add((TENANT, device, ts.replace(minute=0, second=0)))
        batch.append(
            {
                "_id": reading_id(TENANT, device, f"m{i}"),
                "hk": hour_key(TENANT, device, ts),
                "stream": "s",
                "ts": ts,
                "received": ts,
                "values": {"temp": 20 + (i % 97) / 10, "hum": (i * 7919) % 100},
            }
        )
        if len(batch) == 10_000:
            db[mongo.TELEMETRY].insert_many(batch, ordered=False)
            batch = []
    if batch:
        db[mongo.TELEMETRY].insert_many(batch, ordered=False)
    rollups.mark_pending(db, hours)
    return count / (time.monotonic() - began)


def run_offloaded(port: int, token: str, body: dict[str, Any], count: int) -> dict[str, Any]:
    """Post ``count`` reports to the API and wait for the worker to finish them all."""
    client = Client(port, token)
    began = time.monotonic()
    urls = []
    for _ in range(count):
        status, answer = client.call("POST", "/api/reports", body)
        assert status == 202, (status, answer)
        urls.append(answer["url"])
    submit_ms = (time.monotonic() - began) * 1000
    states: dict[str, str] = {}

    def all_done() -> bool:
        for url in urls:
            if states.get(url) not in ("SUCCESS", "FAILURE"):
                states[url] = client.call("GET", url)[1]["state"]
        return all(s in ("SUCCESS", "FAILURE") for s in states.values())

    poll_until(all_done, 7200, interval=0.5, what="offloaded reports")
    failed = [u for u, s in states.items() if s != "SUCCESS"]
    assert not failed, f"reports failed: {failed}"
    return {"seconds": time.monotonic() - began, "submit_ms": submit_ms}


def run_inline(port: int, token: str, body: dict[str, Any], count: int) -> dict[str, Any]:
    """``count`` concurrent requests, each computing the report itself."""
    began = time.monotonic()
    errors: list[Any] = []

    def one() -> None:
        status, answer = Client(port, token).call("POST", "/bench/inline-report", body)
        if status != 200:
            errors.append((status, answer))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    return {"seconds": time.monotonic() - began}


def measure_during(
    port: int, token: str, work: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], list[float]]:
    """Run ``work`` while sampling latency; return its result and the latencies."""
    done = threading.Event()
    latencies: list[float] = []
    sampler = threading.Thread(
        target=lambda: latencies.extend(sample_latency(port, token, done.is_set))
    )
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, latencies


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON result."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--serve", type=int, help="internal: serve the benchmark web app on PORT")
    p.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        help="pool processes of the worker (1 leaves a core to the web app and database)",
    )
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0

    from fairway.devtools import celery_workers as worker

    readings = scaled(1_000_000, args.scale, minimum=10_000)
    LOGS.mkdir(parents=True, exist_ok=True)
    with bench_env("report-offload") as env:
        port = free_port()
        settings = env.with_(
            secret_key="benchmark-secret-key-0123456789",
            web_port=port,
            report_soft_time_limit_s=3600.0,
            report_time_limit_s=3700.0,
            # One user posts all REPORTS at once: this measures offloading, not quotas.
            jobs_max_per_user=REPORTS,
        )
        db = env.db
        registry.create_tenant(db, TENANT, 1, 1000)
        accounts.create_user(db, USER, PASSWORD, "admin", TENANT)
        token = accounts.create_api_token(db, USER, 86400)
        build = db.command("buildInfo")
        database = (
            f"FerretDB {build['ferretdbVersion']}"
            if "ferretdbVersion" in build
            else f"MongoDB {build.get('version')}"
        )
        say(f"inserting {readings:,} readings")
        insert_rate = insert_readings(db, readings)
        say(f"inserted at {insert_rate:,.0f}/s")

        web_log = open(LOGS / "report_offload-web.log", "wb")  # noqa: SIM115
        web = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.report_offload", "--serve", str(port)],
            env={**os.environ, **settings.environ()},
            stdout=web_log,
            stderr=subprocess.STDOUT,
        )
        processes = args.worker_processes
        proc = None
        try:
            client = Client(port, token)
            poll_until(lambda: _answers(client), 60, what="web app")
            proc = worker.start(settings, LOGS / "report_offload-worker.log", concurrency=processes)
            body = {"from": START.isoformat(), "to": (START + timedelta(seconds=readings))
                    .isoformat(), "bucket": 3600}  # fmt: skip

            say("idle latency (15 s)")
            stop_at = time.monotonic() + 15
            idle = sample_latency(port, token, lambda: time.monotonic() > stop_at)

            say("one report over every reading, on the worker")
            single, _ = measure_during(port, token, lambda: run_offloaded(port, token, body, 1))

            say(f"{REPORTS} reports on the worker ({processes} pool processes)")
            offloaded, off_lat = measure_during(
                port, token, lambda: run_offloaded(port, token, body, REPORTS)
            )
            say(f"{REPORTS} reports inside requests")
            inline, in_lat = measure_during(
                port, token, lambda: run_inline(port, token, body, REPORTS)
            )
        finally:
            if proc is not None:
                worker.stop(proc)
            web.terminate()
            web.wait(30)

    lat = {"idle": summary(idle), "offloaded": summary(off_lat), "inline": summary(in_lat)}
    off_ratio = ratio(lat["offloaded"]["p99_ms"], lat["idle"]["p99_ms"], 2)
    in_ratio = ratio(lat["inline"]["p99_ms"], lat["idle"]["p99_ms"], 2)
    result = meta(
        "report_offload",
        args.scale,
        workload={
            "readings": readings,
            "devices": DEVICES,
            "metrics": 2,
            "reports": REPORTS,
            "report": "whole tenant, every reading, 1 h buckets",
            "worker": f"celery prefork -c {processes}",
            "web": "waitress, 8 threads",
            "database": database,
        },
        insert_rate=r(insert_rate),
        single_report={
            "seconds": r(single["seconds"], 2),
            "readings_per_s": r(readings / single["seconds"]),
        },
        offloaded={
            "seconds": r(offloaded["seconds"], 2),
            "submit_ms_for_all": r(offloaded["submit_ms"], 1),
            "readings_per_s": r(REPORTS * readings / offloaded["seconds"]),
        },
        inline={
            "seconds": r(inline["seconds"], 2),
            "readings_per_s": r(REPORTS * readings / inline["seconds"]),
        },
        latency=lat,
        ratios={"offloaded_p99/idle_p99": off_ratio, "inline_p99/idle_p99": in_ratio},
        targets={
            "API p99 within 2x of idle while 10 reports run on workers": {
                "value": off_ratio,
                "met": off_ratio is not None and off_ratio <= 2.0,
            }
        },
    )
    emit(result)
    return 0


def _answers(client: Client) -> bool:
    try:
        return client.call("GET", "/healthz")[0] == 200
    except OSError:
        client.conn.close()
        return False


if __name__ == "__main__":
    sys.exit(main())
