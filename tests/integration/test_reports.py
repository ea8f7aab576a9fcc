"""Reports and exports planned from rollups, marks and device state, on the real database.

One tenant's readings span a UTC day edge with every kind of hour mixed: rolled up,
marked but not rolled (the rollup task behind), rolled then stale (late data marked
again), recent and marked (as the sink does), recent and neither rolled nor marked
(known from ``device_state`` only), and recent but already rolled. Reports, summaries
and exports (run in-process with a fixed ``now``) must equal an independent computation
from the raw readings, and every command they send must be an equality read: never a
count, an aggregation or a range over ``telemetry``.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import monitoring

from fairway.domain.job_params import ExportParams, ReportParams
from fairway.kernel.contract import hour_key, split_reading_id
from fairway.kernel.times import iso_z
from fairway.storage import mongo, rollups
from tasks import export
from tasks.report import TooManyReadings, build_report
from tests.harness import Pipeline, reading_query
from tests.integration.test_tasks import insert_readings
from tests.unit.test_tasks_report import expected_bucket

DAY = datetime(2026, 3, 10, tzinfo=UTC)  # the UTC day edge the data spans
NOW = DAY + timedelta(hours=2, minutes=20)  # open hour DAY+2h; live window DAY+0h..DAY+2h
H = timedelta(hours=1)
DEVICES = ("d1", "d2", "d3")


class Commands(monitoring.CommandListener):
    """Every command a client sends: (name, collection, filter)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        cmd = event.command
        self.seen.append((name, str(cmd.get(name, "")), dict(cmd.get("filter") or {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def of(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, filt) for name, coll, filt in self.seen if coll == collection]


def roll(db: Any, tenant: str, device: str, hour: datetime) -> None:
    """What the rollup task does for a closed hour: compute, then remove the mark."""
    rollups.compute_hour(db, tenant, device, hour)
    db[mongo.ROLLUP_PENDING].delete_one({"_id": hour_key(tenant, device, hour)})


def hour_times(rng: random.Random, hour: datetime, n: int) -> list[datetime]:
    """``n`` random times in the hour plus both of its edges (millisecond precision)."""
    inner = [hour + timedelta(milliseconds=rng.randrange(1, 3_600_000 - 1)) for _ in range(n)]
    return [hour, *inner, hour + H - timedelta(milliseconds=1)]


def store(db: Any, rng: random.Random, tenant: str, device: str, hour: datetime, tag: str) -> None:
    """A device-hour of readings on three streams (one without any numeric value)."""
    times = [t for t in hour_times(rng, hour, rng.randrange(15, 40)) if t <= NOW]
    env = [
        {"temp": rng.gauss(20, 3) if rng.random() > 0.03 else 90.0, "hum": rng.randint(0, 100)}
        for _ in times
    ]
    insert_readings(db, tenant, device, times, env, "env", f"{tag}e")
    watts = [{"watts": rng.uniform(0, 500), "on": True} for _ in times[::2]]
    insert_readings(db, tenant, device, times[::2], watts, "power", f"{tag}p")
    events = [{"door": "open", "ok": False} for _ in times[::5]]
    insert_readings(db, tenant, device, times[::5], events, "events", f"{tag}v")


@pytest.fixture
def commands() -> Commands:
    return Commands()


@pytest.fixture
def db(pipeline: Pipeline, commands: Commands) -> Any:
    """Readings of DAY-5h .. DAY+2h (open), hours in every state; a database handle whose
    commands are recorded in ``commands``."""
    rng = random.Random(12)
    base = pipeline.db
    hours = [DAY + h * H for h in range(-5, 3)]
    for device in DEVICES:
        for hour in hours:
            store(base, rng, "acme", device, hour, f"{device}{hour:%d%H}")
    store(base, rng, "other", "o1", hours[0], "o")  # another tenant: never counted
    store(base, rng, "other", "o1", DAY, "o2")
    for device in DEVICES:  # the rollup task ran for closed hours, except where it is behind
        for hour in hours[:-3]:
            if (device, hour) not in (("d2", DAY - 3 * H), ("d2", DAY - 2 * H)):
                roll(base, "acme", device, hour)
    roll(base, "acme", "d3", DAY)  # recent, but already rolled up
    roll(base, "other", "o1", hours[0])
    # Late data in a rolled hour: marked again, its rollup stale until the next run.
    late = DAY - 4 * H + timedelta(minutes=40)
    insert_readings(base, "acme", "d1", [late, late], [{"temp": 55.5}, {"temp": -5.0}], "env", "L")
    # d1's recent readings came by a path that does not mark: only device_state knows them.
    for hour in hours[-3:]:
        base[mongo.ROLLUP_PENDING].delete_one({"_id": hour_key("acme", "d1", hour)})
    monitored = mongo.connect(pipeline.settings, event_listeners=[commands])
    yield monitored
    monitored.client.close()


@pytest.fixture
def raw(pipeline: Pipeline) -> Any:
    """The stored readings in range, by a plain scan (the test's independent source)."""

    def read(start: datetime, end: datetime, device: str | None) -> list[dict[str, Any]]:
        query = reading_query("acme", device)  # tenant and device: in _id only
        docs = pipeline.db[mongo.TELEMETRY].find(query)
        return [
            {**d, "device": split_reading_id(d["_id"])[1]} for d in docs if start <= d["ts"] < end
        ]

    return read


def expected_report(
    docs: list[dict[str, Any]], start: datetime, bucket_s: int, z: float
) -> dict[str, dict[int, dict[str, float]]]:
    """Per metric and bucket index, what the report must say (statistics module)."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d in docs:
        index = int((d["ts"] - start).total_seconds() // bucket_s)
        for metric, v in d["values"].items():
            if type(v) in (int, float):
                values[metric][index].append(float(v))
    return {m: {i: expected_bucket(vs, z) for i, vs in per.items()} for m, per in values.items()}


def check_equality_reads_only(commands: Commands) -> None:
    """No count, no aggregation; telemetry read by ``hk`` only, the rest by their keys."""
    names = {name for name, _, _ in commands.seen}
    assert not names & {"count", "aggregate", "distinct"}, names
    for name, filt in commands.of(mongo.TELEMETRY):
        assert name == "find" and set(filt) == {"hk"} and isinstance(filt["hk"], str), filt
    for name, filt in commands.of(mongo.ROLLUPS):
        assert name == "find" and set(filt) in ({"tk"}, {"dk"}), filt
    for name, filt in commands.of(mongo.ROLLUP_MINUTES):
        assert name == "find" and set(filt) == {"dk"}, filt
    for name, filt in commands.of(mongo.ROLLUP_PENDING):
        assert name == "find" and set(filt) <= {"tenant", "device"}, filt
        assert all(type(v) is str for v in filt.values()), filt


def report(db: Any, start: datetime, end: datetime, bucket_s: int, **kw: Any) -> dict[str, Any]:
    params = ReportParams(kw.pop("device", None), start.timestamp(), end.timestamp(), bucket_s,
                          2.5, kw.pop("detail", "full"))  # fmt: skip
    progress = kw.pop("progress", lambda done, total: None)
    return build_report(db, "acme", params, kw.pop("max_readings", 10**6), progress, now=NOW)


MIXED = (DAY - 4 * H + timedelta(minutes=30), NOW + timedelta(minutes=10))  # partial hours


@pytest.mark.parametrize("device", [None, "d1", "d2"])
def test_full_report_equals_the_raw_readings_across_hour_and_day_edges(
    db: Any, raw: Any, commands: Commands, device: str | None
) -> None:
    start, end = MIXED
    seen: list[tuple[int, int]] = []
    got = report(db, start, end, 1800, device=device, progress=lambda d, t: seen.append((d, t)))
    docs = raw(start, end, device)
    assert got["detail"] == "full"
    assert got["readings"] == len(docs) > 0
    assert got["devices"] == len({d["device"] for d in docs})
    want = expected_report(docs, start, 1800, 2.5)
    assert set(got["metrics"]) == set(want) == {"temp", "hum", "watts"}
    for metric, data in got["metrics"].items():
        buckets = {int((datetime.fromisoformat(b["start"]) - start).total_seconds() // 1800): b
                   for b in data["buckets"]}  # fmt: skip
        assert set(buckets) == set(want[metric])
        for index, bucket in buckets.items():
            for key, value in want[metric][index].items():
                assert bucket[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (metric, key)
    assert all(done <= total for done, total in seen)
    assert seen[-1] == (len(docs), len(docs))  # corrected hour by hour: exact at the end
    check_equality_reads_only(commands)


def test_progress_total_comes_from_the_rollups_before_any_reading_is_read(
    db: Any, raw: Any, commands: Commands
) -> None:
    start, end = DAY - H, DAY  # every device-hour rolled and current
    seen: list[tuple[int, int]] = []
    got = report(db, start, end, 3600, progress=lambda d, t: seen.append((d, t)))
    n = len(raw(start, end, None))
    assert got["readings"] == n
    assert seen[0] == (0, n)  # before the first telemetry read
    assert all(total == n for _, total in seen)
    check_equality_reads_only(commands)


def test_too_many_readings_is_refused_before_reading_any(
    db: Any, raw: Any, commands: Commands
) -> None:
    start, end = DAY - 5 * H, DAY - 4 * H
    counted = len(raw(start, end, None))
    with pytest.raises(TooManyReadings, match="more than"):
        report(db, start, end, 3600, max_readings=counted - 1)
    assert commands.of(mongo.TELEMETRY) == []
    assert report(db, start, end, 3600, max_readings=counted)["readings"] == counted


def comparable(r: dict[str, Any]) -> dict[str, Any]:
    """The figures a summary shares with a full report."""
    keep = ("count", "min", "max", "mean")
    return {
        "readings": r["readings"],
        "devices": r["devices"],
        "metrics": {
            m: {
                **{k: v[k] for k in keep},
                "buckets": [{"start": b["start"], **{k: b[k] for k in keep}} for b in v["buckets"]],
            }
            for m, v in r["metrics"].items()
        },
    }


def assert_close(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("start", "end", "bucket_s", "device"),
    [
        (DAY - 5 * H, DAY + 3 * H, 3600, None),  # hourly rollups
        (DAY - 5 * H, DAY + 3 * H, 7200, "d1"),
        (MIXED[0], NOW + timedelta(minutes=1), 900, None),  # per-minute, partial hours
        (MIXED[0], NOW + timedelta(minutes=1), 300, "d2"),
    ],
)
def test_summary_equals_the_full_reports_count_min_max_mean(
    db: Any,
    raw: Any,
    commands: Commands,
    start: datetime,
    end: datetime,
    bucket_s: int,
    device: str | None,
) -> None:
    seen: list[tuple[int, int]] = []
    summary = report(db, start, end, bucket_s, device=device, detail="summary",
                     progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    check_equality_reads_only(commands)
    raw_hours = {f["hk"] for name, f in commands.of(mongo.TELEMETRY)}
    full = report(db, start, end, bucket_s, device=device)
    assert summary["detail"] == "summary"
    assert "p50" not in summary["metrics"]["temp"]["buckets"][0]
    assert_close(comparable(summary), comparable(full))
    assert full["readings"] == len(raw(start, end, device))
    assert seen[-1] == (full["readings"], full["readings"])
    # Rolled hours come from rollups: fewer device-hours read raw than hold readings.
    assert len(raw_hours) < len({hour_key("acme", d["device"], d["ts"])
                                 for d in raw(start, end, device)})  # fmt: skip


@pytest.mark.parametrize("device", [None, "d1"])
def test_export_holds_exactly_the_raw_readings_of_the_range(
    db: Any, raw: Any, commands: Commands, device: str | None
) -> None:
    start, end = MIXED
    seen: list[tuple[int, int]] = []
    params = ExportParams(device, start.timestamp(), end.timestamp())
    result = export.export_csv(db, "job-1", "acme", params, 10**6,
                               lambda d, t: seen.append((d, t)), now=NOW)  # fmt: skip
    check_equality_reads_only(commands)
    rows = list(csv.reader(io.StringIO(export.open_file(db, "job-1").read().decode())))
    docs = raw(start, end, device)
    want: Counter[tuple[str, ...]] = Counter()
    for d in docs:
        for metric, v in d["values"].items():
            text = ("true" if v else "false") if isinstance(v, bool) else str(v)
            want[iso_z(d["ts"]), d["device"], d["stream"], metric, text] += 1
    assert rows[0] == list(export.COLUMNS)
    assert Counter(tuple(r) for r in rows[1:]) == want
    assert result["readings"] == len(docs) and result["rows"] == sum(want.values())
    assert seen[-1] == (len(docs), len(docs))
    hours = [datetime.strptime(r[0][:13], "%Y-%m-%dT%H").replace(tzinfo=UTC) for r in rows[1:]]
    assert hours == sorted(hours)  # hour by hour


def test_hours_nobody_marked_are_found_from_device_state_only_when_recent(
    db: Any, raw: Any
) -> None:
    # d1's three recent hours have no mark and no rollup: found through device_state.
    recent = report(db, DAY, DAY + 3 * H, 3600, device="d1")
    assert recent["readings"] == len(raw(DAY, DAY + 3 * H, "d1")) > 0
    # An old hour nobody marked or rolled (stored outside the pipeline) is not found:
    # writers other than the scheduler must mark what they store (rollups.mark_pending).
    old = DAY - 10 * H
    insert_readings(db, "acme", "d3", [old], [{"temp": 1.0}], "env", "x")
    db[mongo.ROLLUP_PENDING].delete_one({"_id": hour_key("acme", "d3", old)})
    assert report(db, old, old + H, 3600, device="d3")["readings"] == 0
