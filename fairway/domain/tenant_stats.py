"""Per-tenant figures for the Tenants page, from the broker's and the schedulers' own
counters (pure functions; the web app fetches the inputs, see ``web/tenant_stats.py``).

From RabbitMQ's management API, per tenant, over the last minute (its samples every
5 s): the *ingest rate* (devices' publishes into ``ingest.<tenant>``), the *accepted
rate* (the relay's publishes into ``tenant.<tenant>``), the *stored rate* (the
scheduler's acks on ``tenant.<tenant>``, sent once readings are durable), the backlog of
both queues now, and from those the *served share* (the tenant's part of everything
stored) against its *weight share* (its part of the weights of the tenants with a
backlog: what weighted round robin promises them while they compete; a tenant without a
backlog is served all it sends). The stored rate per 5 s interval is the live chart.

From the schedulers' Prometheus endpoints (``FAIRWAY_SCHEDULER_METRICS_URLS``): the lag
from relay receipt to durable write, p50 and p99 over the last minute, from the
``fairway_scheduler_lag_seconds`` histogram's bucket counts (interpolated within a
bucket, as Prometheus' ``histogram_quantile`` does). Without those URLs the lag shown is
the queueing estimate backlog / stored rate.

Units. The broker counts messages: a device's batch is one message into
``ingest.<tenant>``, and the relay's bundle (many readings, see ``READINGS_HEADER``) is
one message into ``tenant.<tenant>``, so its ack rate is bundles per second, and served
shares computed from it would favour a tenant whose bundles are small. The histogram
observes every reading, so when the schedulers answer with two reads at least a few
seconds apart, the *stored rate* and the served shares are readings per second from the
growth of its counts (``stored_source`` ``schedulers``); otherwise the broker's ack rate
in messages (``broker``). The lag estimate and the live chart stay in messages (backlog
and acks of the same queue).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fairway.kernel import topology

INGEST_PREFIX = topology.INGEST + "."
TENANT_PREFIX = "tenant."
QUEUE_PATTERN = r"^(ingest|tenant)\."
LAG_METRIC = "fairway_scheduler_lag_seconds"
SERIES_POINTS = 12  # the last minute at the management API's 5 s samples


def _details(item: dict[str, Any], what: str) -> dict[str, Any]:
    return ((item.get("message_stats") or {}).get(f"{what}_details")) or {}


def interval_rates(samples: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(end of interval in epoch ms, messages per second) from cumulative samples (newest
    first, as the management API lists them), oldest interval first. A counter that went
    down (queue re-created) counts from zero."""
    ordered = sorted(samples, key=lambda s: s["timestamp"])
    out = []
    for before, after in itertools.pairwise(ordered):
        seconds = (after["timestamp"] - before["timestamp"]) / 1000
        if seconds <= 0:
            continue
        delta = after["sample"] - before["sample"]
        out.append((int(after["timestamp"]), (delta if delta >= 0 else after["sample"]) / seconds))
    return out[-SERIES_POINTS:]


@dataclass
class TenantFigures:
    """What the Tenants page shows for one tenant."""

    tenant: str
    weight: int = 1
    ingest_rate: float = 0.0
    accepted_rate: float = 0.0
    stored_rate: float = 0.0
    stored_source: str = "broker"  # schedulers: readings/s; broker: messages (bundles)/s
    ingest_backlog: int = 0
    backlog: int = 0
    served_share: float | None = None
    weight_share: float | None = None
    lag_estimate_s: float | None = None
    lag_p50_s: float | None = None
    lag_p99_s: float | None = None
    lag_count: int = 0
    stored_series: list[tuple[int, float]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The API's answer for this tenant."""
        out = dict(self.__dict__)
        out["stored_series"] = [[t, round(r, 3)] for t, r in self.stored_series]
        for key in ("ingest_rate", "accepted_rate", "stored_rate"):
            out[key] = round(out[key], 3)
        return out


def figures(
    queues: Iterable[dict[str, Any]],
    weights: Mapping[str, int],
    lags: Mapping[str, tuple[float, float, int]] | None = None,
    stored_readings: Mapping[str, float] | None = None,
) -> list[TenantFigures]:
    """Per tenant (every tenant in ``weights``), from the management API's queue items,
    the lag quantiles (p50, p99, count) per tenant and the schedulers' readings stored per
    second per tenant (None: not known, the broker's message rate stands); sorted by
    tenant."""
    found = {t: TenantFigures(t, int(w)) for t, w in weights.items()}
    acks: dict[str, float] = {}  # the broker's ack rate (messages/s), for the lag estimate
    for item in queues:
        name = str(item.get("name", ""))
        if name.startswith(INGEST_PREFIX):
            entry = found.get(name[len(INGEST_PREFIX) :])
            if entry is not None:
                entry.ingest_backlog = int(item.get("messages") or 0)
                entry.ingest_rate = float(_details(item, "publish").get("avg_rate") or 0.0)
        elif name.startswith(TENANT_PREFIX):
            entry = found.get(name[len(TENANT_PREFIX) :])
            if entry is not None:
                entry.backlog = int(item.get("messages") or 0)
                entry.accepted_rate = float(_details(item, "publish").get("avg_rate") or 0.0)
                acks[entry.tenant] = float(_details(item, "ack").get("avg_rate") or 0.0)
                entry.stored_rate = acks[entry.tenant]
                entry.stored_series = interval_rates(_details(item, "ack").get("samples") or [])
    out = sorted(found.values(), key=lambda f: f.tenant)
    if stored_readings is not None:
        for f in out:
            f.stored_rate, f.stored_source = stored_readings.get(f.tenant, 0.0), "schedulers"
    stored = sum(f.stored_rate for f in out)
    competing = [f for f in out if f.backlog > 0]
    competing_weight = sum(f.weight for f in competing)
    for f in out:
        f.served_share = f.stored_rate / stored if stored > 0 else None
        if f.backlog > 0 and competing_weight:
            f.weight_share = f.weight / competing_weight
        if acks.get(f.tenant, 0.0) > 0:
            f.lag_estimate_s = (f.backlog + f.ingest_backlog) / acks[f.tenant]
        elif f.backlog + f.ingest_backlog == 0:
            f.lag_estimate_s = 0.0
        if lags and f.tenant in lags:
            f.lag_p50_s, f.lag_p99_s, f.lag_count = lags[f.tenant]
    return out


# -- lag histograms ----------------------------------------------------------------------
Buckets = dict[str, dict[float, float]]  # tenant -> upper bound -> cumulative count


def parse_lag_buckets(text: str) -> Buckets:
    """``fairway_scheduler_lag_seconds`` bucket counts per tenant from one scheduler's
    Prometheus text."""
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != LAG_METRIC:
            continue
        for sample in family.samples:
            if sample.name != LAG_METRIC + "_bucket":
                continue
            tenant = sample.labels.get("tenant", "")
            bound = float(sample.labels["le"])
            out.setdefault(tenant, {})[bound] = float(sample.value)
    return out


def merge(parts: Iterable[Buckets]) -> Buckets:
    """Several schedulers' buckets added up (same bounds: one histogram definition)."""
    out: Buckets = {}
    for part in parts:
        for tenant, buckets in part.items():
            mine = out.setdefault(tenant, {})
            for bound, count in buckets.items():
                mine[bound] = mine.get(bound, 0.0) + count
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated within its bucket
    (Prometheus' ``histogram_quantile``); None without observations."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # beyond the last finite bound: its bound, at least
            width = count - previous_count
            share = (rank - previous_count) / width if width > 0 else 1.0
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


class LagWindow:
    """Merged bucket snapshots over time (at most ``keep``), for quantiles over a window."""

    def __init__(self, keep: int = 64) -> None:
        self._snapshots: deque[tuple[float, Buckets]] = deque(maxlen=keep)

    def add(self, at: float, buckets: Buckets) -> None:
        """Record the schedulers' merged buckets as read at ``at`` (seconds)."""
        self._snapshots.append((at, buckets))

    def quantiles(self, window_s: float = 60.0) -> dict[str, tuple[float, float, int]]:
        """(p50, p99, observations) per tenant over about the last ``window_s``: the newest
        snapshot minus the newest one at least ``window_s`` older (else the oldest kept).
        A counter that went down (a scheduler restarted) counts from zero."""
        if not self._snapshots:
            return {}
        now, newest = self._snapshots[-1]
        base: Buckets = {}  # one snapshot only: everything since the schedulers started
        if len(self._snapshots) > 1:
            older = [snapshot for at, snapshot in self._snapshots if now - at >= window_s]
            base = older[-1] if older else self._snapshots[0][1]
        out: dict[str, tuple[float, float, int]] = {}
        for tenant, buckets in newest.items():
            old = base.get(tenant, {})
            delta = {b: c - old.get(b, 0.0) for b, c in buckets.items()}
            if any(v < 0 for v in delta.values()):
                delta = dict(buckets)
            p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
            count = int(max(delta.values(), default=0))
            if p50 is not None and p99 is not None and count > 0:
                out[tenant] = (p50, p99, count)
        return out

    def rates(self, window_s: float = 60.0, min_span_s: float = 4.0) -> dict[str, float] | None:
        """Observations (readings stored) per second per tenant over about the last
        ``window_s``, from the growth of each tenant's total count; None until two
        snapshots at least ``min_span_s`` apart, and None when a count went down (a
        scheduler restarted: with several, the others' whole counts would look like
        growth) until the window has passed the restart."""
        if len(self._snapshots) < 2:
            return None
        now, newest = self._snapshots[-1]
        older = [(at, snap) for at, snap in self._snapshots if now - at >= window_s]
        then, base = older[-1] if older else self._snapshots[0]
        span = now - then
        if span < min_span_s:
            return None
        out: dict[str, float] = {}
        for tenant, buckets in newest.items():
            total = max(buckets.values(), default=0.0)
            before = max(base.get(tenant, {}).values(), default=0.0)
            if total < before:
                return None
            out[tenant] = (total - before) / span
        return out
