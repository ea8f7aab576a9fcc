"""The bound on a report's (metric, bucket) pairs: from the parameters, and while folding."""

from __future__ import annotations

import pytest

from fairway.domain.job_params import ReportParams
from tasks.report import ReportBuilder, TooManySeries, check_series

PARAMS = ReportParams(device=None, start=0.0, end=600.0, bucket_s=60)  # 10 buckets


def test_the_range_alone_can_exceed_the_bound() -> None:
    check_series(PARAMS, 10)
    with pytest.raises(TooManySeries, match="the range has 10 buckets for each metric"):
        check_series(PARAMS, 9)


def test_folding_stops_at_the_first_pair_past_the_bound() -> None:
    builder = ReportBuilder(PARAMS, max_series=4)
    for minute in range(2):  # two metrics in two buckets: 4 pairs
        builder.add(minute * 60_000, "d", {"a": 1.0, "b": 2.0, "note": "text"})
    builder.add(30_000, "d", {"a": 3.0, "b": 4.0})  # existing pairs cost nothing
    assert builder.series == 4
    with pytest.raises(TooManySeries, match=r"more than 4 .* 3 metrics in the readings so far"):
        builder.add(0, "d", {"c": 1.0})
    unbounded = ReportBuilder(PARAMS)
    for minute in range(10):
        unbounded.add(minute * 60_000, "d", {f"m{i}": 1.0 for i in range(10)})
    assert unbounded.series == 100
