"""The per-tenant lag histogram's exposition is prometheus_client's Histogram's."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from scheduler.metrics import LAG_BUCKETS
from scheduler.tenant_histogram import TenantCounter, TenantGauges, TenantHistogram

OBSERVED = [("acme", 0.005), ("acme", 0.3), ("globex", 100.0), ("acme", 1.0), ("initech", 0.0)]
OBSERVED += [("globex", 0.0051), ("initech", 59.9), ("acme", 60.0), ("acme", 0.01)]


def exposed(kind: str) -> tuple[str, str]:
    """The library's Histogram and TenantHistogram fed the same observations."""
    old, new = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("lag_seconds", "doc", ["tenant"], buckets=LAG_BUCKETS, registry=old)
    rows = TenantHistogram("lag_seconds", "doc", LAG_BUCKETS)
    new.register(rows)
    for tenant, value in OBSERVED:
        histogram.labels(tenant).observe(value)
    rows.observe_many(OBSERVED)
    render = generate_latest if kind == "text" else openmetrics_latest
    return render(old).decode(), render(new).decode()


def masked(text: str) -> str:
    """Creation times differ between the two: keep the series, not the value."""
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)


def test_text_exposition_is_the_libraries_histograms() -> None:
    old, new = exposed("text")
    assert 'lag_seconds_bucket{le="+Inf",tenant="acme"} 5.0' in new
    assert 'lag_seconds_created{tenant="globex"}' in new
    assert masked(new) == masked(old)


def test_openmetrics_exposition_is_the_libraries_histograms() -> None:
    old, new = exposed("openmetrics")
    assert masked(new) == masked(old)


def test_a_removed_tenant_is_no_longer_exposed() -> None:
    registry = CollectorRegistry()
    rows = TenantHistogram("lag_seconds", "doc", LAG_BUCKETS)
    registry.register(rows)
    rows.observe_many([("acme", 0.1), ("globex", 0.2)])
    rows.remove("acme")
    text = generate_latest(registry).decode()
    assert 'tenant="acme"' not in text and 'tenant="globex"' in text


def test_tenant_gauges_expose_what_labelled_gauges_did() -> None:
    old, new = CollectorRegistry(), CollectorRegistry()
    weight = Gauge("w", "weight doc", ["tenant"], registry=old)
    buffered = Gauge("b", "buffered doc", ["tenant"], registry=old)
    gauges = TenantGauges({"w": "weight doc", "b": "buffered doc"})
    new.register(gauges)
    assert generate_latest(new) == generate_latest(old)  # no source yet: no series
    weight.labels("acme").set(2)
    buffered.labels("acme").set(7)
    weight.labels("globex").set(1)  # known, not in the pool yet: weight only
    gauges.source = lambda: [("acme", {"w": 2, "b": 7}), ("globex", {"w": 1})]
    assert generate_latest(new).decode() == generate_latest(old).decode()


def test_tenant_counter_exposes_what_a_labelled_counter_did() -> None:
    for render in (generate_latest, openmetrics_latest):
        old, new = CollectorRegistry(), CollectorRegistry()
        counter = Counter("stored_total", "stored doc", ["tenant"], registry=old)
        rows = TenantCounter("stored_total", "stored doc")
        new.register(rows)
        counts = [("acme", 3), ("globex", 200), ("acme", 1), ("initech", 0)]
        for tenant, n in counts:
            counter.labels(tenant).inc(n)
        rows.inc_many(counts)
        text = render(new).decode()
        assert 'stored_total{tenant="acme"} 4.0' in text
        assert 'stored_created{tenant="globex"}' in text
        assert masked(text) == masked(render(old).decode())
    assert rows.value("acme") == 4.0 and rows.value("nobody") == 0.0
    with pytest.raises(ValueError):
        rows.inc_many([("acme", -1)])
    rows.remove("acme")
    assert 'tenant="acme"' not in generate_latest(new).decode()
