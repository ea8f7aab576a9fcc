"""Run every benchmark in sequence; write ``benchmarks/out/<name>.json``; print a summary.

    python -m benchmarks.run [--scale S] [--only many_queues,relay,...] [--no-plot]

Each benchmark runs as its own child process (``python -m benchmarks.<name>
--scale S``), one after the other (never two at once: they would measure each
other). Its stdout is the one JSON result; its progress goes to stderr. A failed
benchmark is reported and the others still run. Afterwards the plot
(``docs/benchmarks-summary.png``) is regenerated from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import OUT, ROOT

BENCHMARKS = [
    "many_queues",
    "relay",
    "noisy_neighbor",
    "end_to_end",
    "memory",
    "notify_fanout",
    "report_offload",
    "reads",
    "write_cost",
    "isolation",
    "bulk_provision",
    "cluster",
    "tenants_scale",
]


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _rows_many_queues(d: dict) -> list[tuple[str, str, str]]:
    rates, ratios = d["rate_msg_s"], d["ratios"]
    return [
        ("seed consumer (32 conn, prefetch 32)", f"{rates.get('seed', 0):,.0f} msg/s", "1.00"),
        (
            "scheduler, null sink",
            f"{rates.get('scheduler_null', 0):,.0f} msg/s",
            f"{ratios.get('scheduler_null/seed')}",
        ),
        (
            "scheduler, MongoDB sink",
            f"{rates.get('scheduler_mongo', 0):,.0f} msg/s",
            f"{ratios.get('scheduler_mongo/seed')}",
        ),
    ]


def _rows_relay(d: dict) -> list[tuple[str, str, str]]:
    rates, ratios = d["rate_msg_s"], d["ratios"]
    rows = [("fairway relay", f"{rates.get('fairway_relay', 0):,.0f} msg/s", "")]
    for c in ("sync_confirm", "unconfirmed"):
        if c in rates:
            rat = ratios.get(f"fairway_relay/{c}")
            rows.append((f"minimal {c} relay", f"{rates[c]:,.0f} msg/s", f"relay/{c} {rat}"))
    return rows


def _rows_noisy(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    lat = d.get("latency", {})
    for k in ("drr_unloaded", "drr_flood", "fifo_flood"):
        if k in lat:
            value = f"p50 {lat[k]['p50_ms']} / p99 {lat[k]['p99_ms']} ms"
            rows.append((f"quiet latency {k}", value, ""))
    if "latency_ratios" in d:
        lr = d["latency_ratios"]
        rows.append(
            (
                "p99 ratios",
                f"flood/unloaded {lr.get('drr_flood_p99/drr_unloaded_p99')}",
                f"FIFO/DRR {lr.get('fifo_flood_p99/drr_flood_p99')}",
            )
        )
    for k in ("drr", "fifo"):
        if k in d.get("fairness", {}):
            rows.append((f"Jain, 10 backlogged, {k}", f"{d['fairness'][k]['jain']}", ""))
    for k, v in d.get("weighted", {}).items():
        rows.append(
            (
                f"weighted 1:2:3:4 shares, {k}",
                " / ".join(f"{x:.3f}" for x in v["shares"].values()),
                f"max err {v['max_relative_share_error']:.1%}",
            )
        )
    return rows


def _rows_e2e(d: dict) -> list[tuple[str, str, str]]:
    pipe, ceil = d["pipeline"], d["insert_many_ceiling"]
    one = ceil["one_thread"]
    return [
        ("insert_many ceiling, 1 thread", f"{one['rate']:,.0f} docs/s", "1.00"),
        (
            "pipeline stored",
            f"{pipe['stored_rate']:,.0f} docs/s (offered {pipe['offered_rate']:,.0f})",
            f"{d['ratios'].get('pipeline/insert_many_1_thread')}",
        ),
        *(
            (
                f"drain {name}: CPU per reading",
                f"{cpu['total']:,.0f} us ({d['drain_rate'][name]:,.0f} readings/s)",
                f"{d['ratios'].get(f'cpu_per_reading {name}/single (total)', 1.0)}",
            )
            for name, cpu in (d.get("cpu_us_per_reading") or {}).items()
        ),
    ]


def _rows_memory(d: dict) -> list[tuple[str, str, str]]:
    waiting = d["workload"]["readings_waiting"]
    rows = [("scheduler idle", f"{d['idle']['vmhwm_mb']} MB", "1.00")]
    for fmt in ("single", "bundles"):
        if fmt not in d:
            continue
        rows += [
            (
                f"MongoDB sink, {waiting:,} readings waiting ({fmt})",
                f"{d[fmt]['mongo_sink']['vmhwm_mb']} MB",
                f"{d['ratios'].get(f'{fmt} mongo_sink peak/idle')}",
            ),
            (
                f"null sink, {waiting:,} readings drained ({fmt})",
                f"{d[fmt]['null_sink']['vmhwm_mb']} MB",
                f"{d['ratios'].get(f'{fmt} null_sink peak/idle')}",
            ),
        ]
    return rows


def _rows_notify(d: dict) -> list[tuple[str, str, str]]:
    lat, sub = d["latency"], d["subscription_changes"]
    sessions = d["workload"]["sessions"]
    return [
        (f"event -> SSE, {sessions} sessions", f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} ms", ""),
        ("subscription changes, per-queue rebind", f"{sub['per_queue_rate_per_s']:,.0f}/s", "1.00"),
        (
            "subscription changes, e2e binding",
            f"{sub['e2e_rate_per_s']:,.0f}/s",
            f"{d['ratios'].get('e2e/per_queue')}",
        ),
    ]


def _rows_report_offload(d: dict) -> list[tuple[str, str, str]]:
    lat, n = d["latency"], d["workload"]["readings"]
    rate = d["single_report"]["readings_per_s"]
    idle = f"p50 {lat['idle']['p50_ms']} / p99 {lat['idle']['p99_ms']} ms"
    return [
        (f"one report, {n:,} readings", f"{rate:,.0f} readings/s", ""),
        ("GET /api/me idle", idle, "1.00"),
        (
            "GET /api/me, 10 reports on workers",
            f"p50 {lat['offloaded']['p50_ms']} / p99 {lat['offloaded']['p99_ms']} ms",
            f"{d['ratios'].get('offloaded_p99/idle_p99')}",
        ),
        (
            "GET /api/me, 10 reports in requests",
            f"p50 {lat['inline']['p50_ms']} / p99 {lat['inline']['p99_ms']} ms",
            f"{d['ratios'].get('inline_p99/idle_p99')}",
        ),
    ]


def _rows_reads(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for query, by_size in d["p99_ms"].items():
        largest = list(by_size)[-1]
        base = d.get("baseline", {}).get("p99_ms", {}).get(query, {}).get(largest)
        value = f"p99 {by_size[largest]} ms (baseline {base} ms)"
        ratio = d.get("new_over_baseline_p99", {}).get(query, {}).get(largest)
        rows.append((f"{query} at {int(largest):,} readings", value, f"{ratio}"))
    return rows


def _rows_write_cost(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for shape, s in d["shapes"].items():
        plain, kept = s["plain_cpu_us_per_reading"], s["maintained_cpu_us_per_reading"]
        rows.append((f"CPU per reading, {shape}", f"{plain} -> {kept} us", f"{s['ratio']}"))
    return rows


def _rows_isolation(d: dict) -> list[tuple[str, str, str]]:
    base = d["unloaded"]["p99_ms"]
    rows = [("quiet p99, unloaded", f"{base} ms", "1.00")]
    for name, a in d["attacks"].items():
        value = f"{a['quiet']['p99_ms']} ms, {a['quiet_errors']} errors"
        rows.append((f"quiet p99 under {name}", value, f"{a['quiet_p99_ratio']}"))
    return rows


def _rows_bulk_provision(d: dict) -> list[tuple[str, str, str]]:
    n, single, bulk = d["meta"]["tenants"], d["single"], d["bulk"]
    ratios = d["ratios"]
    return [
        (f"{n} tenants + devices, one by one", f"{single['total_s']} s", "1.00"),
        (
            f"{n} tenants + devices, bulk",
            f"{bulk['total_s']} s",
            f"{ratios.get('bulk/single (tenants and devices)')}",
        ),
        ("same batch again (all exist)", f"{bulk.get('rerun_s')} s", ""),
    ]


def _rows_cluster(d: dict) -> list[tuple[str, str, str]]:
    drain, ratios = d["drain"], d["ratios"]
    rows = [
        ("drain, single node", f"{drain['single']['drain_rate']:,.0f} readings/s", "1.00"),
        (
            "drain, 3-node cluster",
            f"{drain['cluster']['drain_rate']:,.0f} readings/s",
            f"{ratios.get('cluster/single drain_rate')}",
        ),
        (
            "CPU per reading, single -> cluster",
            f"{drain['single']['cpu_us_per_reading']['total']} -> "
            f"{drain['cluster']['cpu_us_per_reading']['total']} us",
            f"{ratios.get('cluster/single cpu_us_per_reading')}",
        ),
        ("failover, longest storing pause", f"{d['failover']['max_gap_s']} s", ""),
    ]
    for name, f in d["fairness"].items():
        rows.append((f"weighted Jain, {name}", f"{f['weighted_jain']}", ""))
    return rows


def _rows_tenants_scale(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for n, contenders in d["medians"].items():
        for name, c in contenders.items():
            value = (
                f"idle {c['scheduler_idle'] * 100:.2f} %,"
                f" {c['scheduler_cpu_us_per_reading']} us/reading,"
                f" {c['rss_peak_mb']} MB"
            )
            rows.append((f"{n} tenants, {name}", value, f"{c['drain_rate']:,.0f}/s"))
    for n, seconds in d["provision_s"].items():
        rows.append((f"provision {n} tenants (bulk)", f"{seconds} s", ""))
    return rows


ROWS: dict[str, Callable[[dict], list[tuple[str, str, str]]]] = {
    "many_queues": _rows_many_queues,
    "relay": _rows_relay,
    "noisy_neighbor": _rows_noisy,
    "end_to_end": _rows_e2e,
    "memory": _rows_memory,
    "notify_fanout": _rows_notify,
    "report_offload": _rows_report_offload,
    "reads": _rows_reads,
    "write_cost": _rows_write_cost,
    "isolation": _rows_isolation,
    "bulk_provision": _rows_bulk_provision,
    "cluster": _rows_cluster,
    "tenants_scale": _rows_tenants_scale,
}


def summary(results: dict[str, dict[str, Any]], failures: dict[str, str]) -> str:
    """A plain-text table of the key figures and every target."""
    lines = [f"{'benchmark':<15} {'measure':<42} {'value':<38} ratio"]
    lines.append("-" * len(lines[0]) + "-" * 20)
    for name, d in results.items():
        try:
            rows = ROWS[name](d)
        except Exception as exc:  # a summary must never hide the JSON that was written
            rows = [("(summary failed)", repr(exc), "")]
        for i, (what, value, rat) in enumerate(rows):
            lines.append(f"{name if i == 0 else '':<15} {what:<42} {value:<38} {rat}")
    lines.append("")
    lines.append("targets:")
    for name, d in results.items():
        for target, v in (d.get("targets") or {}).items():
            mark = "MET    " if v.get("met") else "NOT MET"
            lines.append(f"  [{mark}] {name}: {target} (measured {v.get('value')})")
    for name, why in failures.items():
        lines.append(f"  [FAILED ] {name}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return non-zero if any failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for name in names:
        print(f"=== {name} (scale {args.scale})", file=sys.stderr, flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", "--scale", str(args.scale)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            failures[name] = f"exit code {proc.returncode} after {elapsed:.0f} s"
            continue
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            failures[name] = f"output is not JSON: {exc}"
            continue
        result["wall_seconds"] = round(elapsed, 1)
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        results[name] = result
        print(f"=== {name} done in {elapsed:.0f} s", file=sys.stderr, flush=True)
    print(summary(results, failures))
    if not args.no_plot:
        try:
            from benchmarks import plot

            for path in plot.main([]):
                print(f"plot: {path}", file=sys.stderr)
        except ImportError as exc:
            print(f"plot skipped ({exc}); pip install matplotlib", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
