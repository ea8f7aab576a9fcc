"""``/api/tenant-stats``: per-tenant ingest, stored and served figures for the Tenants page.

Fed by the broker's and the schedulers' own counters, never by reading the readings:
one management API request for every tenant's queues (``ingest.<t>``, ``tenant.<t>``:
depth, publish and ack counters with their samples over the last minute), one request
per scheduler metrics endpoint (``FAIRWAY_SCHEDULER_METRICS_URLS``, the lag histogram),
and the tenants' weights. The answer is computed at most every ``CACHE_S`` per web
process and shared by every browser, so the cost is bounded whatever the number of
viewers; the figures themselves are the pure :mod:`fairway.domain.tenant_stats`.

Operators see every tenant; admins their own (shares are fractions of everything
stored, so no other tenant is named); viewers get 403.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app
from prometheus_client import Counter
from pydantic import Field

from fairway.amqp import management
from fairway.domain import tenant_stats
from fairway.kernel.settings import Settings
from fairway.kernel.times import iso_z
from fairway.storage import accounts, registry
from web.auth import current_user, roles_required
from web.database import get_db
from web.errors import ApiError
from web.models import Answer
from web.openapi import operation

bp = Blueprint("tenant_stats", __name__, url_prefix="/api/tenant-stats")
log = logging.getLogger(__name__)
EXTENSION = "fairway_tenant_stats"
CACHE_S = 5.0
SCRAPE_TIMEOUT_S = 2.0

REFRESHES = Counter(
    "fairway_web_tenant_stats_refreshes_total",
    "Tenant figures recomputed (management API and scheduler metrics read), by outcome",
    ["outcome"],
)


class TenantFiguresAnswer(Answer):
    tenant: str
    weight: int
    ingest_rate: float = Field(
        description="devices' messages into ingest.<tenant> per second (a batch is one)"
    )
    accepted_rate: float = Field(
        description="the relay's messages (bundles) into tenant.<tenant> per second"
    )
    stored_rate: float = Field(
        description="readings stored per second (stored_source schedulers), or the "
        "broker's acks on tenant.<tenant>, bundles per second (stored_source broker)"
    )
    stored_source: str = Field(description="schedulers (readings) or broker (messages)")
    ingest_backlog: int = Field(description="messages waiting before the relay")
    backlog: int = Field(description="messages waiting before the scheduler")
    served_share: float | None
    weight_share: float | None = Field(description="among tenants whose tenant queue backs up")
    lag_estimate_s: float | None
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_count: int
    stored_series: list[list[float]] = Field(
        description="[epoch ms, acks on tenant.<tenant> per second (messages)]"
    )


class SchedulersAsked(Answer):
    asked: int
    answered: int


class TenantStatsAnswer(Answer):
    at: str
    window_s: int
    refresh_s: float
    lag_source: str = Field(description="schedulers (histograms) or estimate (backlog/rate)")
    schedulers: SchedulersAsked
    tenants: list[TenantFiguresAnswer]


@dataclass
class Snapshot:
    """One computation, shared until it is ``CACHE_S`` old."""

    at: float
    tenants: list[tenant_stats.TenantFigures]
    schedulers_asked: int
    schedulers_answered: int


class TenantStats:
    """The cached figures of one web process (a Flask extension)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._lags = tenant_stats.LagWindow()
        self.urls = [u.strip() for u in settings.scheduler_metrics_urls.split(",") if u.strip()]

    def snapshot(self) -> Snapshot:
        """The figures, recomputed if older than ``CACHE_S`` (one caller at a time)."""
        with self._lock:
            now = time.monotonic()
            if self._snapshot is not None and now - self._snapshot.at < CACHE_S:
                return self._snapshot
            try:
                queues = management.queue_rates(
                    self.settings.rabbitmq_mgmt_url,
                    self.settings.vhost,
                    tenant_stats.QUEUE_PATTERN,
                )
            except Exception as exc:
                REFRESHES.labels("broker_unavailable").inc()
                log.warning("management API unavailable", extra={"error": repr(exc)})
                raise ApiError(
                    503, "stats_unavailable", "the broker's management API does not answer"
                ) from None
            weights = {d["_id"]: d["weight"] for d in registry.tenant_documents(get_db())}
            answered = self._read_lags(now)
            stored = self._lags.rates() if answered and answered == len(self.urls) else None
            figures = tenant_stats.figures(queues, weights, self._lags.quantiles(), stored)
            self._snapshot = Snapshot(now, figures, len(self.urls), answered)
            REFRESHES.labels("ok").inc()
            return self._snapshot

    def _read_lags(self, now: float) -> int:
        parts, answered = [], 0
        for url in self.urls:
            try:
                parts.append(tenant_stats.parse_lag_buckets(_fetch(url)))
                answered += 1
            except Exception as exc:
                log.info("scheduler metrics unavailable", extra={"url": url, "error": repr(exc)})
        if answered == len(self.urls):  # a partial sum would look like a restart
            self._lags.add(now, tenant_stats.merge(parts))
        return answered


def _fetch(url: str) -> str:
    """One scheduler's lag histogram, Prometheus text (``/metrics`` unless a path is given)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    query = urllib.parse.urlencode({"name[]": tenant_stats.LAG_METRIC + "_bucket"})
    target = urllib.parse.urlunsplit(parts._replace(path=path, query=query))
    with urllib.request.urlopen(target, timeout=SCRAPE_TIMEOUT_S) as response:
        return str(response.read().decode())


def init_app(app: Flask) -> None:
    """Give the app its :class:`TenantStats`."""
    app.extensions[EXTENSION] = TenantStats(app.config["FAIRWAY_SETTINGS"])


@bp.get("")
@roles_required(accounts.OPERATOR, accounts.ADMIN)
@operation(answer=TenantStatsAnswer, errors={503: ["stats_unavailable"]})
def stats() -> dict[str, Any]:
    """Per tenant: ingest, accepted and stored rates, backlogs, lag, weight and served share."""
    source: TenantStats = current_app.extensions[EXTENSION]
    snap = source.snapshot()
    user = current_user()
    tenants = [t for t in snap.tenants if user.is_operator or t.tenant == user.tenant]
    lag_source = "schedulers" if snap.schedulers_answered else "estimate"
    return {
        "at": iso_z(time.time() - (time.monotonic() - snap.at)),
        "window_s": 60,
        "refresh_s": CACHE_S,
        "lag_source": lag_source,
        "schedulers": {"asked": snap.schedulers_asked, "answered": snap.schedulers_answered},
        "tenants": [t.as_json() for t in tenants],
    }
