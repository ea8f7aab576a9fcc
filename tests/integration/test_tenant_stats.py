"""/api/tenant-stats on the real broker, relay and scheduler: a flooding tenant's backlog
and lag against a quiet tenant's, weight and served shares, lag from the scheduler's
histogram, scoping by role, and the bounded refresh."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pika
import pytest

from fairway.devtools.processes import wait_for
from fairway.kernel import topology
from fairway.storage import accounts, registry
from tests.harness import Pipeline
from tests.integration.test_web_api import Api
from web import create_app
from web import tenant_stats as stats_module

PASSWORD = "correct horse battery"


def flood(
    pipeline: Pipeline,
    device: str,
    count: int,
    rate: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """``count`` readings from ``device`` (no confirms): as fast as one channel publishes,
    or ``rate`` a second (in chunks of 100) until ``stop`` is set."""
    chunk = 100
    with pipeline.channel() as channel:
        now = time.time()
        started = time.monotonic()
        props = pika.BasicProperties(delivery_mode=2)
        for i in range(count):
            body = orjson.dumps({"ts": now, "id": f"f{i}", "values": {"v": i}})
            channel.basic_publish(topology.TELEMETRY, f"{device}.env", body, props)
            if rate is not None and (i + 1) % chunk == 0:
                ahead = started + (i + 1) / rate - time.monotonic()
                if stop is not None and stop.wait(max(0.0, ahead)):
                    return


def trickle(pipeline: Pipeline, device: str, stop: threading.Event) -> None:
    """One reading every 0.2 s until ``stop``."""
    with pipeline.channel() as channel:
        i = 0
        while not stop.is_set():
            body = orjson.dumps({"ts": time.time(), "id": f"q{i}", "values": {"v": i}})
            channel.basic_publish(topology.TELEMETRY, f"{device}.env", body)
            i += 1
            stop.wait(0.2)


def slow_scheduler(pipeline: Pipeline) -> int:
    """A scheduler much slower than the flood (one writer, batches of 5 that never grow:
    a few hundred readings/s here), so the flood's backlog lasts long enough for the broker's 5 s
    statistics to show it: its metrics port."""
    child = pipeline.start("scheduler", writers=1, batch_size=5, batch_max=5, batch_linger_ms=0)
    return child.metrics_port


# A flood from one device faster than its rate limit would be refused in part. Bundles no
# larger than the slow scheduler's batches of 5 (a larger bundle is a batch of its own,
# and the scheduler would no longer be slow).
@pytest.mark.settings(
    scheduler_buffer=200,
    scheduler_prefetch=20,
    device_rate=100_000,
    device_burst=100_000,
    bundle_max_readings=5,
)
def test_flooding_tenant_against_a_quiet_one(pipeline: Pipeline) -> None:
    pipeline.tenant("noisy", weight=1)
    pipeline.tenant("quiet", weight=3)
    pipeline.device("noisy", "n1")
    pipeline.device("quiet", "q1")
    pipeline.start("relay")
    port = slow_scheduler(pipeline)
    settings = pipeline.with_(scheduler_metrics_urls=f"http://127.0.0.1:{port}")
    app = create_app({"FAIRWAY_SETTINGS": settings, "TESTING": True})
    api: dict[str, Api] = {}
    for name, role, tenant in (
        ("op", accounts.OPERATOR, None),
        ("adm", accounts.ADMIN, "quiet"),
        ("view", accounts.VIEWER, "quiet"),
    ):
        accounts.create_user(pipeline.db, name, PASSWORD, role, tenant)
        api[name] = Api(app.test_client(), accounts.create_api_token(pipeline.db, name, 3600))

    stop = threading.Event()
    quiet = threading.Thread(target=trickle, args=(pipeline, "q1", stop), daemon=True)
    quiet.start()
    # A flood that lasts (about 30 s at up to 5,000 readings/s, several times what the slow
    # scheduler stores) so the broker's publish rate, an average over its last statistics
    # intervals, is still above the stored rate when the backlog shows: a burst of 20,000
    # had finished by then (CI), and 1,500/s the scheduler kept up with.
    flooder = threading.Thread(
        target=flood, args=(pipeline, "n1", 150_000), kwargs={"rate": 5000.0, "stop": stop}
    )
    flooder.start()
    try:

        def figures() -> dict[str, dict[str, Any]]:
            answer = api["op"]("GET", "/api/tenant-stats")
            assert answer.status_code == 200, answer.json
            return {t["tenant"]: t for t in answer.json["tenants"]}

        # The broker's figures lag by up to its 5 s statistics interval.
        last: dict[str, Any] = {}

        def flooded() -> dict[str, dict[str, Any]] | None:
            last.update(f := figures())
            noisy = f["noisy"]
            backlog = noisy["backlog"] + noisy["ingest_backlog"]
            # The broker's ingest rate averages over the queue's samples of the last
            # minute (idle ones before the flood included), the schedulers' stored rate
            # over the web app's reads since it started: the ingest rate overtakes the
            # stored rate a few seconds into the flood, not at once.
            # Stored readings, not bundles, once the web app has read the schedulers'
            # counts twice.
            overtaken = noisy["ingest_rate"] > noisy["stored_rate"] > 0
            readings = noisy["stored_source"] == "schedulers"
            return f if backlog > 1000 and overtaken and readings else None

        try:
            seen = wait_for(flooded, 90, "the flooding tenant's backlog", interval=1.0)
        except TimeoutError:
            depths = {q: pipeline.depth(q) for q in ("ingest", "ingest.noisy", "tenant.noisy")}
            pytest.fail(
                f"no backlog seen; last figures: {last}; stored {pipeline.stored(device='n1')};"
                f" depths {depths}, rejected {pipeline.depth('rejected')}"
            )
        noisy, calm = seen["noisy"], seen["quiet"]
        assert calm["backlog"] + calm["ingest_backlog"] < 50
        assert 0 < noisy["served_share"] <= 1
        # Weight shares among the tenants whose tenant queue (before the scheduler) has a
        # backlog, weights 1 and 3; a backlog before the relay does not count.
        weights = {"noisy": 1, "quiet": 3}
        competing = {t: weights[t] for t in weights if seen[t]["backlog"] > 0}
        for tenant, figure in seen.items():
            expected = weights[tenant] / sum(competing.values()) if tenant in competing else None
            assert figure["weight_share"] == expected, (tenant, figure)
        assert noisy["lag_estimate_s"] > 1

        # The lag histogram from the scheduler's own metrics: the quiet tenant's readings
        # do not wait behind the flood; the flood's do.
        def lag_quantiles() -> dict[str, dict[str, Any]] | None:
            last.update(f := figures())
            p99 = {t: f[t]["lag_p99_s"] for t in f}
            return f if None not in p99.values() and p99["noisy"] > 1 else None

        try:
            lags = wait_for(lag_quantiles, 90, "lag quantiles", interval=1.0)
        except TimeoutError:
            pytest.fail(f"no lag quantiles; last figures: {last}")
        assert lags["quiet"]["lag_p99_s"] < lags["noisy"]["lag_p99_s"]
        assert lags["quiet"]["lag_p50_s"] < 2.0
        answer = api["op"]("GET", "/api/tenant-stats").json
        assert answer["lag_source"] == "schedulers"
        assert answer["schedulers"] == {"asked": 1, "answered": 1}
    finally:
        stop.set()
        quiet.join(5)
        flooder.join(10)

    # Scope: an admin sees their tenant only, a viewer nothing.
    mine = api["adm"]("GET", "/api/tenant-stats").json["tenants"]
    assert [t["tenant"] for t in mine] == ["quiet"]
    assert api["view"]("GET", "/api/tenant-stats").status_code == 403
    assert api["adm"]("GET", "/api/tenant-stats?tenant=noisy").json["tenants"] == mine


def test_refreshes_are_bounded_and_the_broker_unavailable_is_a_503(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    accounts.create_user(pipeline.db, "op", PASSWORD, accounts.OPERATOR, None)
    api = Api(app.test_client(), accounts.create_api_token(pipeline.db, "op", 3600))
    before = stats_module.REFRESHES.labels("ok")._value.get()
    for _ in range(20):
        answer = api("GET", "/api/tenant-stats")
        assert answer.status_code == 200
        assert answer.json["lag_source"] == "estimate"
        assert [t["tenant"] for t in answer.json["tenants"]] == ["acme"]
    # Twenty viewers' polls within the cache period: one computation.
    assert stats_module.REFRESHES.labels("ok")._value.get() - before == 1

    dead = pipeline.with_(rabbitmq_mgmt_url="http://guest:guest@127.0.0.1:1")
    broken = create_app({"FAIRWAY_SETTINGS": dead, "TESTING": True})
    answer = Api(broken.test_client(), api.token)("GET", "/api/tenant-stats")
    assert answer.status_code == 503
    assert answer.json["error"] == "stats_unavailable"


def test_the_scheduler_exports_each_tenants_weight(pipeline: Pipeline) -> None:
    """fairway_scheduler_weight{tenant}: Grafana's weight share, following weight changes."""
    pipeline.tenant("heavy", weight=3)
    pipeline.tenant("light", weight=1)
    scheduler = pipeline.start("scheduler")

    def weights() -> dict[str, float]:
        return scheduler.metric_by("fairway_scheduler_weight", "tenant")

    wait_for(lambda: weights() == {"heavy": 3.0, "light": 1.0}, 10, "weights exported")
    registry.set_tenant_weight(pipeline.db, "light", 5)
    wait_for(lambda: weights().get("light") == 5.0, 10, "the new weight exported")
