"""The Tenants page's figures from the broker's queue counters and the schedulers' lag
histograms (fairway.domain.tenant_stats, pure)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from fairway.domain import tenant_stats as ts


def _samples(counts: list[int], start_ms: int = 1_000_000, step_ms: int = 5000) -> list[dict]:
    """Cumulative samples, newest first as the management API lists them."""
    points = [{"sample": c, "timestamp": start_ms + i * step_ms} for i, c in enumerate(counts)]
    return list(reversed(points))


def _queue(name: str, messages: int, publish: float = 0.0, ack: float = 0.0, acks=None) -> dict:
    stats = {
        "publish_details": {"avg_rate": publish, "samples": []},
        "ack_details": {"avg_rate": ack, "samples": _samples(acks or [])},
    }
    return {"name": name, "messages": messages, "message_stats": stats}


def test_interval_rates_from_cumulative_samples() -> None:
    assert ts.interval_rates(_samples([0, 50, 150, 150])) == [
        (1_005_000, 10.0),
        (1_010_000, 20.0),
        (1_015_000, 0.0),
    ]
    # A counter that went down (queue re-created) counts from zero.
    assert ts.interval_rates(_samples([100, 20])) == [(1_005_000, 4.0)]
    assert ts.interval_rates([]) == []


def test_figures_rates_backlogs_and_shares() -> None:
    queues = [
        _queue("ingest.noisy", 4000, publish=2500.0),
        _queue("tenant.noisy", 6000, publish=2400.0, ack=1000.0, acks=[0, 5000]),
        _queue("ingest.quiet", 0, publish=10.0),
        _queue("tenant.quiet", 0, publish=10.0, ack=10.0),
        _queue("tenant.heavy", 3000, publish=3000.0, ack=2000.0),
        _queue("tenant.unknown", 5, ack=1.0),  # no tenant record: not shown
        _queue("ingest", 7),  # the shared queue: not a tenant's
    ]
    weights = {"noisy": 1, "quiet": 1, "heavy": 2}
    out = {f.tenant: f for f in ts.figures(queues, weights, {"quiet": (0.02, 0.08, 40)})}
    assert sorted(out) == ["heavy", "noisy", "quiet"]
    noisy, quiet, heavy = out["noisy"], out["quiet"], out["heavy"]
    assert (noisy.ingest_rate, noisy.accepted_rate, noisy.stored_rate) == (2500.0, 2400.0, 1000.0)
    assert (noisy.ingest_backlog, noisy.backlog) == (4000, 6000)
    assert noisy.stored_series == [(1_005_000, 1000.0)]
    assert noisy.served_share == pytest.approx(1000 / 3010)
    assert heavy.served_share == pytest.approx(2000 / 3010)
    # Weight shares among the tenants with a backlog: 1:2; none for a tenant without one.
    assert (noisy.weight_share, heavy.weight_share, quiet.weight_share) == (1 / 3, 2 / 3, None)
    assert noisy.lag_estimate_s == pytest.approx(10.0)  # 10,000 queued at 1,000/s
    assert quiet.lag_estimate_s == 0.0
    assert (quiet.lag_p50_s, quiet.lag_p99_s, quiet.lag_count) == (0.02, 0.08, 40)
    assert noisy.lag_p50_s is None
    assert out["noisy"].as_json()["stored_series"] == [[1_005_000, 1000.0]]


def test_figures_without_traffic() -> None:
    [idle] = ts.figures([], {"idle": 3})
    assert (idle.served_share, idle.weight_share, idle.lag_estimate_s) == (None, None, 0.0)


def test_quantile_interpolates_within_buckets() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert ts.quantile(0.5, buckets) == pytest.approx(0.1)
    assert ts.quantile(0.7, buckets) == pytest.approx(0.3)  # halfway through (0.1, 0.5]
    assert ts.quantile(0.99, buckets) == pytest.approx(0.95)
    assert ts.quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    # Beyond the last finite bound: that bound (the histogram cannot say more).
    assert ts.quantile(0.99, {1.0: 10.0, math.inf: 100.0}) == 1.0


def _scheduler_text(observations: dict[str, list[float]]) -> str:
    registry = CollectorRegistry()
    lag = Histogram(ts.LAG_METRIC, "lag", ["tenant"], registry=registry, buckets=(0.01, 0.1, 1, 10))
    for tenant, values in observations.items():
        for value in values:
            lag.labels(tenant).observe(value)
    return generate_latest(registry).decode()


def test_lag_window_over_the_last_minute_across_schedulers() -> None:
    first = ts.parse_lag_buckets(_scheduler_text({"a": [5.0] * 100}))
    assert first["a"][10.0] == 100.0 and first["a"][math.inf] == 100.0
    window = ts.LagWindow(keep=10)
    window.add(0.0, ts.merge([first]))
    (p50, _p99, count) = window.quantiles()["a"]
    assert count == 100 and 1.0 < p50 <= 10.0
    # A minute later two schedulers have served 100 fast readings of a, 10 of b.
    later_a = _scheduler_text({"a": [5.0] * 100 + [0.005] * 60, "b": [0.05] * 10})
    other = _scheduler_text({"a": [0.005] * 40})
    window.add(30.0, ts.merge([ts.parse_lag_buckets(later_a)]))
    window.add(61.0, ts.merge([ts.parse_lag_buckets(later_a), ts.parse_lag_buckets(other)]))
    lags = window.quantiles(60.0)
    assert lags["a"][2] == 100 and lags["a"][1] <= 0.01  # the slow ones are older
    assert lags["b"][2] == 10 and 0.01 < lags["b"][0] <= 0.1
    # A scheduler restart (counters went down) counts from zero rather than negative.
    window.add(70.0, ts.merge([ts.parse_lag_buckets(_scheduler_text({"a": [0.005] * 3}))]))
    assert window.quantiles(60.0)["a"][2] == 3


def test_stored_rates_in_readings_from_the_schedulers_counts() -> None:
    """Bundles make the broker's ack rate messages, not readings: with the schedulers'
    counts the stored rate and the served shares are readings per second."""
    window = ts.LagWindow()
    assert window.rates() is None
    window.add(0.0, {"noisy": {0.1: 100.0, math.inf: 100.0}, "quiet": {math.inf: 10.0}})
    window.add(2.0, {"noisy": {0.1: 150.0, math.inf: 200.0}, "quiet": {math.inf: 12.0}})
    assert window.rates() is None  # two reads less than a few seconds apart
    window.add(10.0, {"noisy": {0.1: 900.0, math.inf: 1100.0}, "quiet": {math.inf: 20.0}})
    rates = window.rates()
    assert rates == {"noisy": pytest.approx(100.0), "quiet": pytest.approx(1.0)}
    # A scheduler restarted (a count went down): not known until the window passed it.
    window.add(20.0, {"noisy": {math.inf: 50.0}})
    assert window.rates(window_s=5.0) is None
    window.add(30.0, {"noisy": {math.inf: 100.0}})
    assert window.rates(window_s=10.0) == {"noisy": pytest.approx(5.0)}

    # 100 bundles/s of 10 readings each against 10 single-reading bundles/s.
    queues = [
        _queue("tenant.noisy", 5000, ack=100.0),
        _queue("tenant.quiet", 0, ack=10.0),
    ]
    by_broker = {f.tenant: f for f in ts.figures(queues, {"noisy": 1, "quiet": 1})}
    assert by_broker["noisy"].served_share == pytest.approx(100 / 110)
    assert by_broker["noisy"].stored_source == "broker"
    readings = {"noisy": 1000.0, "quiet": 10.0}
    out = {f.tenant: f for f in ts.figures(queues, {"noisy": 1, "quiet": 1}, None, readings)}
    assert (out["noisy"].stored_rate, out["noisy"].stored_source) == (1000.0, "schedulers")
    assert out["noisy"].served_share == pytest.approx(1000 / 1010)
    assert out["noisy"].lag_estimate_s == pytest.approx(50.0)  # messages over messages/s
