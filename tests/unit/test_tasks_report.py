"""Report statistics and job parameters, checked against an independent computation."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from fairway.domain.job_params import (
    ExportParams,
    ReportParams,
    parse_export,
    parse_report,
    summary_step,
)
from fairway.kernel.settings import Settings
from fairway.storage.ranges import RangePlan
from fairway.storage.rollups import fold_readings
from tasks.report import (
    OUTLIERS_LISTED,
    ReportBuilder,
    SummaryBuilder,
    Throttle,
    paced,
    percentile,
)

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def expected_bucket(values: list[float], z: float) -> dict[str, float]:
    """What a bucket must say, computed with the statistics module."""
    mean = statistics.fmean(values)
    std = statistics.pstdev(values)
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else None
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": mean,
        "std": std,
        "p50": statistics.median(values),
        "p95": q[94] if q else values[0],
        "outliers": sum(1 for v in values if std > 0 and abs(v - mean) / std > z),
    }


def test_buckets_match_statistics_module() -> None:
    rng = random.Random(7)
    params = ReportParams(device=None, start=START, end=START + 3600, bucket_s=600, z=2.5)
    builder = ReportBuilder(params)
    truth: dict[tuple[str, int], list[float]] = defaultdict(list)
    for i in range(5000):
        ts_ms = round((START + rng.uniform(0, 3600)) * 1000)
        temp = rng.gauss(20, 3) if rng.random() > 0.01 else rng.gauss(60, 1)  # some spikes
        hum = rng.randint(0, 100)  # integers count as numbers
        builder.add(ts_ms, f"dev{i % 4}", {"temp": temp, "hum": hum, "on": True, "mode": "eco"})
        bucket = (ts_ms - round(START * 1000)) // 600_000
        truth["temp", bucket].append(temp)
        truth["hum", bucket].append(float(hum))
    report = builder.result("acme")
    assert report["readings"] == 5000
    assert report["devices"] == 4
    assert set(report["metrics"]) == {"temp", "hum"}  # booleans and strings are not metrics
    for metric, data in report["metrics"].items():
        assert len(data["buckets"]) == 6
        assert data["count"] == sum(len(v) for (m, _), v in truth.items() if m == metric)
        for index, bucket in enumerate(data["buckets"]):
            want = expected_bucket(truth[metric, index], 2.5)
            for key, value in want.items():
                assert bucket[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (metric, key)
    temp_outliers = sum(b["outliers"] for b in report["metrics"]["temp"]["buckets"])
    assert temp_outliers >= 20  # the spikes are found


def test_top_outliers_are_the_most_extreme_with_device_and_time() -> None:
    params = ReportParams(device="d1", start=START, end=START + 60, bucket_s=60, z=3.0)
    builder = ReportBuilder(params)
    for i in range(200):
        builder.add(round((START + i * 0.25) * 1000), "d1", {"v": 10.0 + (i % 3)})
    spikes = [(5, 100.0), (17, -80.0), (40, 90.0), (41, 95.0), (50, 85.0), (55, -70.0)]
    for second, value in spikes:
        builder.add(round((START + second) * 1000), "d9", {"v": value})
    bucket = builder.result("acme")["metrics"]["v"]["buckets"][0]
    listed = bucket["top_outliers"]
    most_extreme = sorted((v for _, v in spikes), key=lambda v: -abs(v - bucket["mean"]))
    assert [o["value"] for o in listed] == most_extreme[:OUTLIERS_LISTED]
    assert bucket["outliers"] == len(spikes)
    for o in listed:
        assert o["z"] == pytest.approx((o["value"] - bucket["mean"]) / bucket["std"])
        assert abs(o["z"]) > 3 and o["device"] == "d9"
    when = {v: s for s, v in spikes}[listed[0]["value"]]
    assert listed[0]["ts"] == f"2026-01-01T00:00:{when:02d}Z"


def test_constant_values_have_no_outliers_and_one_value_is_its_own_percentile() -> None:
    builder = ReportBuilder(ReportParams(None, START, START + 20, 10))
    for i in range(10):
        builder.add(round((START + i) * 1000), "d", {"flat": 4})
    builder.add(round((START + 15) * 1000), "d", {"flat": 7})
    first, second = builder.result("t")["metrics"]["flat"]["buckets"]
    assert (first["std"], first["outliers"], first["top_outliers"]) == (0.0, 0, [])
    assert second["start"] == "2026-01-01T00:00:10Z"
    assert (second["count"], second["p50"], second["p95"]) == (1, 7.0, 7.0)


def test_percentile_interpolates_like_numpy_default() -> None:
    data = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(data, 50) == 3.0
    assert percentile(data, 95) == pytest.approx(4 + 0.8 * 6)
    assert percentile(data, 0) == 1.0 and percentile(data, 100) == 10.0


SETTINGS = Settings.from_env({}, report_max_buckets=100)


def test_report_parameters_parse() -> None:
    params = parse_report(
        {"from": "2026-01-01T00:00:00Z", "to": START + 3600, "bucket": 60, "device": "boiler-7"},
        SETTINGS,
    )
    assert params == ReportParams("boiler-7", START, START + 3600, 60, 3.0)
    assert parse_export({"from": START, "to": START + 1}) == ExportParams(None, START, START + 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"to": START + 10, "bucket": 1}, "'from' is required"),
        ({"from": "yesterday", "to": START + 10, "bucket": 1}, "'from'"),
        ({"from": START, "to": START, "bucket": 1}, "'to' must be later"),
        ({"from": START, "to": START + 10}, "'bucket' is required"),
        ({"from": START, "to": START + 10, "bucket": 1.5}, "whole number"),
        ({"from": START, "to": START + 10, "bucket": 0}, "at least 1 second"),
        ({"from": START, "to": START + 10, "bucket": True}, "'bucket'"),
        ({"from": START, "to": START + 3600, "bucket": 1}, "3600 buckets"),
        ({"from": START, "to": START + 10, "bucket": 1, "z": 0.5}, "'z'"),
        ({"from": START, "to": START + 10, "bucket": 1, "device": "Bad Id"}, "'device'"),
        ({"from": START, "to": START + 60, "bucket": 60, "detail": "brief"}, "'detail' must be"),
        ({"from": START, "to": START + 60, "bucket": 30, "detail": "summary"}, "multiple of 60"),
        ({"from": START + 1, "to": START + 61, "bucket": 60, "detail": "summary"}, "whole"),
        ({"from": START, "to": START + 90, "bucket": 60, "detail": "summary"}, "'detail': 'full'"),
    ],
)
def test_bad_report_parameters_say_what_is_wrong(body: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_report(body, SETTINGS)


def test_times_are_epoch_seconds_on_the_wire() -> None:
    params = parse_report(
        {"from": "2026-01-01T01:00:00+01:00", "to": START + 60, "bucket": 60}, SETTINGS
    )
    assert math.isclose(params.start, START)
    assert params.to_json() == {
        "device": None,
        "start": START,
        "end": START + 60,
        "bucket_s": 60,
        "z": 3.0,
        "detail": "full",
    }


def test_paced_reading_keeps_its_share_of_the_time() -> None:
    """After each batch the stream sleeps busy * (1 - share) / share."""
    pauses: list[float] = []

    def slow_items() -> Iterator[int]:
        for i in range(10):
            time.sleep(0.01)  # "reading" one item
            yield i

    out = list(paced(slow_items(), 0.25, 5, sleep=pauses.append))
    assert out == list(range(10))
    assert len(pauses) == 2  # one per full batch of 5
    for pause in pauses:  # 5 items of >= 10 ms busy each: pause >= 3 x busy
        assert pause >= 3 * 0.05 * 0.9
    assert list(paced(iter(range(3)), 1.0, 1, sleep=pauses.append)) == [0, 1, 2]
    with pytest.raises(ValueError):
        list(paced(iter(range(3)), 0.0, 1))


def test_summary_needs_whole_hours_or_whole_minutes() -> None:
    hour = 3600
    assert summary_step(START, START + 2 * hour, hour) == 3600
    assert summary_step(START, START + 2 * hour, 2 * hour) == 3600
    assert summary_step(START, START + 2 * hour, 900) == 60  # hour edges, minute bucket
    assert summary_step(START + 60, START + 2 * hour, hour) == 60  # not on an hour
    assert summary_step(START + 60, START + 2 * hour, 120) == 60
    assert summary_step(START + 30, START + 2 * hour, hour) is None
    assert summary_step(START, START + 90, 60) is None  # 'to' not on a minute
    assert summary_step(START, START + hour, 90) is None
    body = {"from": START, "to": START + hour, "bucket": 900, "detail": "summary"}
    assert parse_report(body, SETTINGS).detail == "summary"
    assert parse_report({**body, "detail": "full", "bucket": 70}, SETTINGS).detail == "full"


T0 = datetime.fromtimestamp(START, UTC)
H = timedelta(hours=1)


def test_a_plan_estimates_from_rollup_counts_and_refuses_on_whole_hours_only() -> None:
    plan = RangePlan("t", T0 + timedelta(minutes=30), T0 + 3 * H)
    plan.counts = {(T0, "a"): 100, (T0 + H, "a"): 40, (T0 + H, "b"): 7, (T0 + 2 * H, "b"): 5}
    plan.pending = {(T0 + 2 * H, "b"), (T0 + 2 * H, "c")}
    plan.live = {(T0 + 2 * H, "a")}
    assert plan.device_hours() == [
        (T0, "a"), (T0 + H, "a"), (T0 + H, "b"),
        (T0 + 2 * H, "a"), (T0 + 2 * H, "b"), (T0 + 2 * H, "c"),
    ]  # fmt: skip
    assert plan.estimate((T0, "a")) == 100  # partly in range: the whole hour's count
    assert plan.estimate((T0 + 2 * H, "c")) == 0  # no rollup yet: counted when read
    assert plan.estimated_total() == 152
    assert plan.counted_at_least() == 52  # the first hour is partly outside the range
    assert plan.current((T0 + H, "a")) and not plan.current((T0 + 2 * H, "b"))


def test_progress_total_is_corrected_hour_by_hour_and_never_below_done() -> None:
    plan = RangePlan("t", T0, T0 + 2 * H, counts={(T0, "a"): 10})
    plan.pending = {(T0 + H, "a")}
    seen: list[tuple[int, int]] = []
    throttle = Throttle(lambda d, t: seen.append((d, t)), plan.estimated_total(), plan)
    throttle(0, force=True)
    throttle.hour_read((T0, "a"), 9)  # one reading of the hour was before... or deleted
    throttle(9, force=True)
    throttle(12, force=True)  # mid-way through the pending hour: done is never above total
    throttle.hour_read((T0 + H, "a"), 5)
    throttle(14, force=True)
    assert seen == [(0, 10), (9, 9), (12, 12), (14, 14)]


def test_summary_of_folds_equals_the_full_reports_count_min_max_mean() -> None:
    rng = random.Random(3)
    docs = []
    for i in range(3000):
        ts = T0 + timedelta(seconds=rng.uniform(0, 3 * 3600))
        values = {"temp": rng.gauss(20, 4), "n": rng.randint(-5, 5), "ok": True, "s": "x"}
        if i % 7 == 0:
            values = {"ok": False}  # a reading without numbers
        docs.append({"stream": "env" if i % 2 else "power", "ts": ts, "values": values})
    by_hour: dict[datetime, list[dict]] = defaultdict(list)
    for doc in docs:
        by_hour[doc["ts"].replace(minute=0, second=0, microsecond=0)].append(doc)
    for bucket_s, step in ((3600, 3600), (900, 60), (7200, 3600)):
        params = ReportParams(None, START, START + 4 * 3600, bucket_s, 3.0, "summary")
        full = ReportBuilder(params)
        for doc in docs:
            full.add(round(doc["ts"].timestamp() * 1000), "dev", doc["values"])
        summary = SummaryBuilder(params)
        for hour, hour_docs in by_hour.items():
            summary.add_folds("dev", hour, fold_readings(hour_docs), step)
        want, got = full.result("t"), summary.result("t")
        assert (got["readings"], got["devices"]) == (want["readings"], want["devices"])
        assert got["metrics"].keys() == want["metrics"].keys() == {"temp", "n"}
        for metric, data in got["metrics"].items():
            expected = want["metrics"][metric]
            keys = ("start", "count", "min", "max", "mean")
            for key in keys[1:]:
                assert data[key] == pytest.approx(expected[key], rel=1e-12)
            assert len(data["buckets"]) == len(expected["buckets"])
            for b, e in zip(data["buckets"], expected["buckets"], strict=True):
                assert set(b) == set(keys)  # no percentiles or outliers in a summary
                assert b["start"] == e["start"]
                for key in keys[1:]:
                    assert b[key] == pytest.approx(e[key], rel=1e-12), (bucket_s, metric, key)
