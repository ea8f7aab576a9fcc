"""Per-tenant metrics kept as plain rows (or read at scrape time) behind custom collectors.

``prometheus_client`` gives each label set of a ``Histogram`` a child holding a lock
and a value object per bucket: about 4.3 KB of RSS per tenant with 13 buckets, 43 MB
at 10,000 tenants (issue 17). Here a tenant is one list of ints and floats under one
lock. The exposition is the library's: ``_bucket`` (cumulative, ``le`` as the library
formats it), ``_count``, ``_sum`` and ``_created`` per tenant.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class TenantHistogram(Collector):
    """``name{tenant, le}``: observations per tenant in fixed buckets (+Inf added)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name, self._doc = name, documentation
        self._bounds = [float(b) for b in buckets]
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._lock = threading.Lock()
        # tenant -> [count per bucket (not cumulative) ..., sum, created]
        self._rows: dict[str, list[float]] = {}

    def observe_many(self, observations: Iterable[tuple[str, float]]) -> None:
        """Count each (tenant, value), under one lock for the whole batch."""
        bounds, width = self._bounds, len(self._les)
        with self._lock:
            for tenant, value in observations:
                row = self._rows.get(tenant)
                if row is None:
                    row = self._rows[tenant] = [0] * width + [0.0, time.time()]
                row[bisect_left(bounds, value)] += 1  # le: value <= bound
                row[width] += value

    def observe_counts(self, observations: Iterable[tuple[str, float, int]]) -> None:
        """Count each (tenant, value, count): ``value`` observed ``count`` times (the
        same as ``count`` observations of it), under one lock for the whole batch."""
        bounds, width = self._bounds, len(self._les)
        with self._lock:
            for tenant, value, count in observations:
                row = self._rows.get(tenant)
                if row is None:
                    row = self._rows[tenant] = [0] * width + [0.0, time.time()]
                row[bisect_left(bounds, value)] += count
                total = row[width]
                for _ in range(count):  # added one by one: the sum observe_many would give
                    total += value
                row[width] = total

    def remove(self, tenant: str) -> None:
        """Forget a tenant's series."""
        with self._lock:
            self._rows.pop(tenant, None)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._doc, labels=["tenant"])]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            rows = [(tenant, list(row)) for tenant, row in self._rows.items()]
        family = HistogramMetricFamily(self._name, self._doc, labels=["tenant"])
        width = len(self._les)
        for tenant, row in rows:
            total, buckets = 0.0, []
            for le, count in zip(self._les, row[:width], strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric([tenant], buckets, row[width])
            family.samples.append(
                Sample(self._name + "_created", {"tenant": tenant}, row[width + 1])
            )
        yield family


class TenantCounter(Collector):
    """``name_total{tenant}`` (and ``name_created``): a counter per tenant as plain rows.

    ``Counter.labels(tenant)`` validates and looks the child up under the metric's lock on
    every call; the scheduler calls it per tenant of every written batch, which is up to
    one call per reading when readings are spread over thousands of tenants (issue 17),
    and each child holds ~0.7 KB. Here one lock is taken per batch and a tenant is a
    two-item list.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name.removesuffix("_total")
        self._doc = documentation
        self._lock = threading.Lock()
        self._rows: dict[str, list[float]] = {}  # tenant -> [value, created]

    def inc_many(self, counts: Iterable[tuple[str, float]]) -> None:
        """Add each (tenant, amount >= 0), under one lock for the whole batch."""
        with self._lock:
            for tenant, amount in counts:
                if amount < 0:
                    raise ValueError("counters only go up")
                row = self._rows.get(tenant)
                if row is None:
                    row = self._rows[tenant] = [0.0, time.time()]
                row[0] += amount

    def value(self, tenant: str) -> float:
        """The tenant's count so far (0 if never counted)."""
        with self._lock:
            row = self._rows.get(tenant)
            return row[0] if row is not None else 0.0

    def remove(self, tenant: str) -> None:
        """Forget a tenant's series."""
        with self._lock:
            self._rows.pop(tenant, None)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._name, self._doc, labels=["tenant"])]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            rows = [(tenant, row[0], row[1]) for tenant, row in self._rows.items()]
        family = CounterMetricFamily(self._name, self._doc, labels=["tenant"])
        for tenant, value, created in rows:
            family.add_metric([tenant], value, created=created)
        yield family


# One row per tenant: (tenant, {gauge name: value}); a gauge absent from a row is not
# exposed for that tenant.
GaugeRows = Callable[[], Iterable[tuple[str, Mapping[str, float]]]]


class TenantGauges(Collector):
    """Gauges ``name{tenant}`` whose values a source function gives at scrape time.

    The source runs on the scrape thread: it must copy what it reads in one step (a
    ``list`` of a dict's items), as the scheduler's I/O thread keeps changing it.
    """

    def __init__(self, documentation: Mapping[str, str]) -> None:
        self._docs = dict(documentation)
        self.source: GaugeRows | None = None

    @property
    def names(self) -> list[str]:
        """The gauges' names."""
        return list(self._docs)

    def describe(self) -> list[Metric]:
        return list(self._families().values())

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {n: GaugeMetricFamily(n, doc, labels=["tenant"]) for n, doc in self._docs.items()}

    def collect(self) -> Iterator[Metric]:
        families = {
            name: GaugeMetricFamily(name, doc, labels=["tenant"])
            for name, doc in self._docs.items()
        }
        for tenant, values in self.source() if self.source is not None else ():
            for name, value in values.items():
                families[name].add_metric([tenant], float(value))
        yield from families.values()
