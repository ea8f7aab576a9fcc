"""The database's CPU per stored reading under PostgreSQL and FerretDB settings, side by side.

    python -m benchmarks.pg_settings [--scale S] [--readings 20000] [--rounds 3]
                                     [--arms defaults,wal,...]

Each arm is a PostgreSQL 15 cluster of its own (``initdb`` into a temporary directory,
started on a free loopback port with services.sh's options plus the arm's ``-c``
settings) with a private FerretDB on it (the services' binary, services.sh's flags and
Go settings, plus the arm's FerretDB flags): the whole cluster is the arm's, so its CPU
counts every PostgreSQL process (backends, WAL writer, checkpointer, autovacuum; from
``/proc``: the postmaster's own and reaped children's time plus its live children's)
and FerretDB's. Each round writes the same readings through the real
:class:`scheduler.sink.MongoSink` (end_to_end's shape: :func:`benchmarks.ferretdb_gc.bodies`,
write batches of 250) into one database per arm that grows round by round, arms in a
rotating order. Every round starts with a ``CHECKPOINT`` in every cluster (unless
``--no-checkpoint``), so each round is the stretch right after a checkpoint: the worst
case for full-page images, the most that larger ``max_wal_size``/``checkpoint_timeout``
could save (at ~16 MB of WAL a second, services.sh's 1 GB ``max_wal_size`` checkpoints
every ~35 s; a round is a few seconds). Per round also: WAL bytes and the full-page
images' share (``pg_waldump --stats`` between the round's LSNs), checkpoints and buffers
written by backends (``pg_stat_bgwriter``), load average.

Arms (:data:`ARMS`): ``defaults`` (what services.sh runs), ``buffers``
(``shared_buffers``), ``walcomp`` (``wal_compression``), ``noautovacuum``, ``warnlog``
(FerretDB ``--log-level=warn``), ``ginoff`` and ``gin256`` (the GIN indexes without a
pending list, or with a 256 kB one, instead of :data:`fairway.storage.ferretdb.GIN_OPTIONS`)
and ``async`` (``synchronous_commit = off``: **not durable for acknowledged writes**,
measured only to size the commit flush's share). After each arm's round, two keyed reads
are timed (``find_one`` by ``hk`` for each device: of the hour written, and of an hour with
nothing stored), since a GIN pending list is scanned by every keyed read.

Target: the best durable arm's database CPU per reading <= 0.9 x ``defaults``.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from benchmarks.common import emit, meta, parser, r, say, scaled
from benchmarks.ferretdb_gc import (
    BATCH_READINGS,
    DEVICES_PER_TENANT,
    PER_BUNDLE,
    TENANTS,
    WARM_READINGS,
    bodies,
)
from fairway.storage import mongo
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink
from tests import harness

NAME = "pg_settings"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PG_DB = "ferretdb"
# name -> (PostgreSQL settings, extra FerretDB flags, durable for acknowledged writes)
ARMS: dict[str, tuple[dict[str, str], list[str], bool]] = {
    "defaults": ({}, [], True),
    "buffers": ({"shared_buffers": "512MB"}, [], True),
    "walcomp": ({"wal_compression": "lz4"}, [], True),
    "noautovacuum": ({"autovacuum": "off"}, [], True),
    "warnlog": ({}, ["--log-level=WARN"], True),
    "async": ({"synchronous_commit": "off"}, [], False),
    # Other storage parameters of the GIN indexes fairway.storage.ferretdb makes (its
    # GIN_OPTIONS in the other arms), applied after mongo.ensure_indexes: see GIN_ARMS.
    "ginoff": ({}, [], True),
    "gin256": ({}, [], True),
}
GIN_ARMS: dict[str, dict[str, str]] = {
    "ginoff": {"fastupdate": "off"},  # no pending list: what Fairway made before db12
    "gin256": {"fastupdate": "on", "gin_pending_list_limit": "256"},
}
TARGET_RATIO = 0.9


def pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<v>/bin`` (as services.sh's ``pg_bin``)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not found:
        raise SystemExit("PostgreSQL is not installed (/usr/lib/postgresql/<v>/bin)")
    return found[-1]


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses root: run its tools as the package's ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.getuid() == 0 else args


def proc_times(pid: int) -> tuple[float, float]:
    """(own user+system, reaped children's user+system) CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (
        (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        (int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
    )


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError):
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def parse_waldump_stats(text: str) -> dict[str, Any]:
    """``pg_waldump --stats=record`` output -> records, record bytes, full-page-image bytes
    and the three largest record types by combined bytes."""
    rows: dict[str, list[int]] = {}
    for line in text.splitlines()[2:]:
        parts = re.sub(r"\([^)]*\)|\[[^]]*\]", " ", line).split()
        if len(parts) >= 5 and all(p.isdigit() for p in parts[-4:]):
            rows[" ".join(parts[:-4])] = [int(x) for x in parts[-4:]]
    total = rows.pop("Total", [0, 0, 0, 0])
    top = sorted(rows.items(), key=lambda kv: -kv[1][3])[:3]
    return {
        "records": total[0],
        "record_bytes": total[1],
        "fpi_bytes": total[2],
        "top": {name: v[3] for name, v in top},
    }


class Cluster:
    """One arm: its PostgreSQL cluster, its FerretDB, CPU and WAL counters of both."""

    def __init__(
        self, name: str, data: Path, postmaster: int, pg_url: str, ferretdb: int, mongo_url: str
    ) -> None:
        import psycopg

        self.data = data
        self.name, self.postmaster, self.pg_url = name, postmaster, pg_url
        self.ferretdb, self.mongo_url = ferretdb, mongo_url
        self.sql = psycopg.connect(pg_url, autocommit=True, connect_timeout=10)
        self.client: MongoClient = MongoClient(mongo_url, tz_aware=True)
        self.db: Database = self.client[f"pgs-{uuid.uuid4().hex[:8]}"]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: PostgreSQL (every process of the cluster) and FerretDB.
        A child's time moves into the postmaster's reaped total when it exits, so the sum
        only grows (the watcher's own backend is counted too: a few queries a round)."""
        own, reaped = proc_times(self.postmaster)
        pg = own + reaped
        for pid in children(self.postmaster):
            with suppress(OSError):
                pg += proc_times(pid)[0]
        return {"postgres": pg, "ferretdb": proc_times(self.ferretdb)[0]}

    def counters(self) -> dict[str, Any]:
        row = self.sql.execute(
            "SELECT pg_current_wal_insert_lsn()::text, b.checkpoints_timed + b.checkpoints_req,"
            " b.buffers_backend FROM pg_stat_bgwriter b"
        ).fetchone()
        assert row is not None
        return {"lsn": row[0], "checkpoints": int(row[1]), "buffers_backend": int(row[2])}

    def wal_stats(self, start: str, end: str) -> dict[str, Any]:
        """Records, record bytes and full-page-image bytes between two LSNs, and the three
        largest record types by bytes (``pg_waldump --stats=record``)."""
        out = subprocess.run(
            as_postgres(
                [
                    str(pg_bin() / "pg_waldump"),
                    "-p",
                    str(self.data / "pg_wal"),
                    "-s",
                    start,
                    "-e",
                    end,
                    "--stats=record",
                ]
            ),
            capture_output=True,
            text=True,
        ).stdout
        return parse_waldump_stats(out)

    def set_gin_options(self, options: dict[str, str]) -> None:
        """``ALTER INDEX ... SET (options)`` on every GIN index of the arm's database."""
        rows = self.sql.execute(
            "SELECT schemaname, indexname FROM pg_indexes WHERE schemaname = %s"
            " AND indexdef LIKE '%%USING gin%%'",
            (self.db.name,),
        ).fetchall()
        settings = ", ".join(f"{k} = {v}" for k, v in options.items())
        for schema, index in rows:
            self.sql.execute(f'ALTER INDEX "{schema}"."{index}" SET ({settings})')

    def read_ms(self, keys: list[str]) -> float:
        """Mean milliseconds of one keyed read (``find_one`` by ``hk``) over ``keys``."""
        collection = self.db[mongo.TELEMETRY]
        started = time.perf_counter()
        for key in keys:
            collection.find_one({"hk": key})
        return (time.perf_counter() - started) / len(keys) * 1000

    def close(self) -> None:
        self.client.close()
        self.sql.close()


@contextmanager
def cluster(name: str, template: Path, root: Path) -> Iterator[Cluster]:
    """A copy of the ``template`` cluster started with the arm's settings, and a FerretDB."""
    settings, ferret_flags, _ = ARMS[name]
    data = root / name / "data"
    shutil.copytree(template, data, symlinks=True)
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(root / name)], check=True)
    port = harness.free_port()
    options = f"-p {port} -k '' -c listen_addresses=127.0.0.1 " + " ".join(
        f"-c {k}={v}" for k, v in settings.items()
    )
    ctl = [str(pg_bin() / "pg_ctl"), "-D", str(data), "-l", str(root / name / "pg.log"), "-w"]
    subprocess.run(as_postgres([*ctl, "-o", options, "start"]), check=True, capture_output=True)
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        admin = f"postgres://postgres@127.0.0.1:{port}/postgres"
        url = f"postgres://postgres@127.0.0.1:{port}/{PG_DB}"
        import psycopg

        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {PG_DB}")
            conn.execute(f"ALTER DATABASE {PG_DB} SET plan_cache_mode = force_custom_plan")
        state = root / name / "ferretdb"
        state.mkdir()
        backend = ["--handler=postgresql", f"--postgresql-url={url}", *ferret_flags]
        with harness.private_ferretdb(state, backend) as (mongo_url, proc):
            arm = Cluster(name, data, postmaster, url, proc.pid, mongo_url)
            try:
                yield arm
            finally:
                arm.close()
    finally:
        subprocess.run(as_postgres([*ctl, "-m", "fast", "stop"]), capture_output=True)


def make_template(root: Path) -> Path:
    """One ``initdb`` (as services.sh runs it), copied for every arm."""
    template = root / "template"
    template.mkdir()
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(root)], check=True)
    subprocess.run(
        as_postgres(
            [
                str(pg_bin() / "initdb"),
                "-D",
                str(template),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    return template


def write_round(
    arm: Cluster, sink: MongoSink, data: list[bytes], count: int, checkpoint: bool
) -> dict[str, Any]:
    """Checkpoint (if asked), then write ``data`` through the sink; the arm's costs per reading."""
    if checkpoint:
        arm.sql.execute("CHECKPOINT")
    c0, w0, started = arm.cpu(), arm.counters(), time.perf_counter()
    stored = 0
    per_batch = BATCH_READINGS // PER_BUNDLE
    for start in range(0, len(data), per_batch):
        stored += sink.write(data[start : start + per_batch]).stored
    wall = time.perf_counter() - started
    c1, w1 = arm.cpu(), arm.counters()
    assert stored == count, f"{arm.name}: {stored} of {count} stored"
    wal = arm.wal_stats(w0["lsn"], w1["lsn"])
    hour = time.strftime("%Y%m%d%H", time.gmtime())
    before_hour = time.strftime("%Y%m%d%H", time.gmtime(time.time() - 3600))
    devices = [f"{t}-d{d}" for t in TENANTS for d in range(DEVICES_PER_TENANT)]
    stored_keys = [f"{d.split('-')[0]}:{d}:{hour}" for d in devices]
    empty_keys = [f"{d.split('-')[0]}:{d}:{before_hour}" for d in devices]
    pg_s, fe_s = c1["postgres"] - c0["postgres"], c1["ferretdb"] - c0["ferretdb"]
    return {
        "readings_per_s": round(count / wall),
        "database_us_per_reading": r((pg_s + fe_s) / count * 1e6),
        "postgres_us_per_reading": r(pg_s / count * 1e6),
        "ferretdb_us_per_reading": r(fe_s / count * 1e6),
        "wal_bytes_per_reading": round((wal["record_bytes"] + wal["fpi_bytes"]) / count),
        "wal_fpi_bytes_per_reading": round(wal["fpi_bytes"] / count),
        "wal_top_bytes_per_reading": {k: round(v / count) for k, v in wal["top"].items()},
        "read_ms": r(arm.read_ms(stored_keys), 2),
        "read_empty_hour_ms": r(arm.read_ms(empty_keys), 2),
        "checkpoints": int(w1["checkpoints"] - w0["checkpoints"]),
        "buffers_backend": int(w1["buffers_backend"] - w0["buffers_backend"]),
    }


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--readings", type=int, default=20_000, help="per arm and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument(
        "--no-checkpoint", action="store_true", help="rounds do not start with a CHECKPOINT"
    )
    args = p.parse_args()
    names = args.arms.split(",")
    unknown = set(names) - set(ARMS)
    if unknown or "defaults" not in names:
        raise SystemExit(f"--arms: 'defaults' and any of {', '.join(ARMS)}; unknown {unknown}")
    count = scaled(args.readings, args.scale, minimum=BATCH_READINGS)
    count -= count % (len(TENANTS) * PER_BUNDLE)
    run_meta = meta(
        NAME,
        args.scale,
        readings=count,
        rounds=args.rounds,
        arms={n: {"postgres": ARMS[n][0], "ferretdb": ARMS[n][1]} for n in names},
        postgres=pg_bin().parent.name,
        batch_readings=BATCH_READINGS,
        loadavg_at_start=[round(x, 2) for x in os.getloadavg()],
    )
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fairway-pgs-")))
        os.chmod(root, 0o755)
        template = make_template(root)
        arms = {n: stack.enter_context(cluster(n, template, root)) for n in names}
        sinks = {}
        for n, arm in arms.items():
            mongo.ensure_indexes(arm.db, arm.pg_url)
            if n in GIN_ARMS:
                arm.set_gin_options(GIN_ARMS[n])
            sinks[n] = MongoSink(arm.db, 2.0, RollupFolder(arm.db, start_thread=False))
            assert sinks[n].write(bodies(WARM_READINGS, -1)).stored == WARM_READINGS
        for k in range(args.rounds):
            data = bodies(count, k)
            order = names[k % len(names) :] + names[: k % len(names)]
            found: dict[str, Any] = {
                n: write_round(arms[n], sinks[n], data, count, not args.no_checkpoint)
                for n in order
            }
            found["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            say(f"round {k}: {found}")
            rounds.append(found)
        for sink in sinks.values():
            sink.close()

    keys = (
        "database_us_per_reading",
        "postgres_us_per_reading",
        "ferretdb_us_per_reading",
        "readings_per_s",
        "wal_bytes_per_reading",
        "wal_fpi_bytes_per_reading",
        "checkpoints",
        "read_ms",
        "read_empty_hour_ms",
    )
    medians = {n: {k: r(statistics.median(rd[n][k] for rd in rounds)) for k in keys} for n in names}
    base = medians["defaults"]["database_us_per_reading"]
    ratios = {n: round(m["database_us_per_reading"] / base, 3) for n, m in medians.items()}
    durable = {n: v for n, v in ratios.items() if ARMS[n][2] and n != "defaults"}
    best = min(durable, key=lambda n: durable[n]) if durable else "defaults"
    emit(
        {
            "meta": {**run_meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "rounds": rounds,
            "medians": medians,
            "ratios_to_defaults": ratios,
            "targets": {
                f"best_durable_arm/defaults<={TARGET_RATIO} ({best})": {
                    "value": ratios[best],
                    "met": ratios[best] <= TARGET_RATIO,
                }
            },
        }
    )


if __name__ == "__main__":
    main()
