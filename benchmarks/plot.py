"""Plot the benchmark results: ``python -m benchmarks.plot`` -> ``docs/benchmarks-summary.png``.

Reads whatever ``benchmarks/out/*.json`` exist (``python -m benchmarks.run`` writes
them) and draws one figure with up to four panels: quiet-tenant latency (DRR vs
FIFO), served shares of ten backlogged tenants, weighted shares, and throughput
against each benchmark's baseline. Needs matplotlib (``pip install matplotlib``;
not a project dependency).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import OUT, ROOT

DOCS = ROOT / "docs"


def load(out: Path) -> dict[str, dict[str, Any]]:
    """Every result JSON in ``out``, by benchmark name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def main(argv: list[str] | None = None) -> list[Path]:
    """Draw the figure; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--target", type=Path, default=DOCS / "benchmarks-summary.png")
    args = p.parse_args(argv)
    results = load(args.out)
    nn = results.get("noisy_neighbor", {})

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (ax_lat, ax_fair), (ax_w, ax_tp) = axes

    # (a) quiet-tenant latency CDF
    styles = {
        "drr_unloaded": ("DRR, no flood", "tab:green", "-"),
        "drr_flood": ("DRR, noisy tenant flooding", "tab:blue", "-"),
        "fifo_flood": ("one FIFO queue, flooding", "tab:red", "--"),
    }
    for key, (label, color, ls) in styles.items():
        pct = nn.get("latency", {}).get(key, {}).get("percentiles_ms", {})
        if pct:
            qs = sorted(pct, key=float)
            ax_lat.plot(
                [pct[q] for q in qs],
                [float(q) for q in qs],
                ls,
                color=color,
                marker="o",
                ms=3,
                label=f"{label} (p99 {nn['latency'][key]['p99_ms']:,.0f} ms)",
            )
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("publish -> stored in MongoDB (ms, log)")
    ax_lat.set_ylabel("percentile of quiet tenants' messages")
    ax_lat.set_title("Quiet tenants' latency while one tenant floods")
    ax_lat.grid(True, which="both", alpha=0.3)
    if ax_lat.lines:
        ax_lat.legend(loc="lower right", fontsize=8)

    # (b) served shares, ten backlogged tenants
    fair = nn.get("fairness", {})
    if fair:
        tenants = list(fair["drr"]["shares"])
        x = range(len(tenants))
        w = 0.4
        drr = [fair["drr"]["shares"][t] for t in tenants]
        fifo = [fair.get("fifo", {}).get("shares", {}).get(t, 0) for t in tenants]
        ax_fair.bar([i - w / 2 for i in x], drr, w, label=f"DRR (Jain {fair['drr']['jain']})")
        if "fifo" in fair:
            ax_fair.bar(
                [i + w / 2 for i in x],
                fifo,
                w,
                color="tab:red",
                label=f"FIFO (Jain {fair['fifo']['jain']})",
            )
        ax_fair.axhline(0.1, color="k", ls=":", lw=1, label="fair share 0.1")
        ax_fair.set_yscale("log")
        ax_fair.set_xticks(list(x), tenants)
        ax_fair.set_ylabel("share of writes in the window (log)")
        ax_fair.set_title("10 backlogged tenants; nn0 publishes 100x each other")
        ax_fair.legend(fontsize=8)

    # (c) weighted shares
    weighted = nn.get("weighted", {})
    if weighted:
        first = next(iter(weighted.values()))
        tenants = list(first["target_shares"])
        series = [("target (weights 1:2:3:4)", first["target_shares"], "0.6")]
        colors = ["tab:blue", "tab:red", "tab:purple", "tab:orange"]
        for (key, v), color in zip(weighted.items(), colors, strict=False):
            label = f"{key} (prefetch {v.get('scheduler_prefetch')})"
            series.append((label, v["shares"], color))
        w = 0.8 / len(series)
        for j, (label, shares, color) in enumerate(series):
            ax_w.bar(
                [i + (j - (len(series) - 1) / 2) * w for i in range(len(tenants))],
                [shares[t] for t in tenants],
                w,
                label=label,
                color=color,
            )
        ax_w.set_xticks(range(len(tenants)), tenants)
        ax_w.set_ylabel("share of writes in the window")
        ax_w.set_title("Weighted DRR: 4 backlogged tenants")
        ax_w.legend(fontsize=8)

    # (d) throughput against each benchmark's baseline
    bars: list[tuple[str, float, str]] = []
    mq = results.get("many_queues")
    if mq:
        rates = mq["rate_msg_s"]
        base = rates.get("seed") or 1.0
        for key, label in (
            ("seed", "many queues: seed consumer"),
            ("scheduler_null", "many queues: scheduler, null sink"),
            ("scheduler_mongo", "many queues: scheduler, MongoDB sink"),
        ):
            if key in rates:
                bars.append((label, rates[key] / base, f"{rates[key]:,.0f} msg/s"))
    rl = results.get("relay")
    if rl:
        rates = rl["rate_msg_s"]
        base = rates.get("unconfirmed") or 1.0
        for key, label in (
            ("unconfirmed", "relay: minimal, no confirms"),
            ("sync_confirm", "relay: minimal, sync confirm"),
            ("fairway_relay", "relay: fairway relay"),
        ):
            if key in rates:
                bars.append((label, rates[key] / base, f"{rates[key]:,.0f} msg/s"))
    e2e = results.get("end_to_end")
    if e2e:
        ceil = e2e["insert_many_ceiling"]["one_thread"]["rate"]
        pipe = e2e["pipeline"]["stored_rate"]
        bars.append(("e2e: insert_many ceiling", 1.0, f"{ceil:,.0f} docs/s"))
        bars.append(("e2e: devices->relay->scheduler->DB", pipe / ceil, f"{pipe:,.0f} docs/s"))
    if bars:
        ys = list(range(len(bars)))[::-1]
        ax_tp.barh(ys, [b[1] for b in bars], color="tab:gray")
        for y, (_, value, text) in zip(ys, bars, strict=True):
            ax_tp.text(value, y, f" {text}", va="center", fontsize=8)
        ax_tp.set_yticks(ys, [b[0] for b in bars], fontsize=8)
        ax_tp.axvline(1.0, color="k", ls=":", lw=1)
        ax_tp.set_xlabel("rate relative to the group's baseline (first bar)")
        ax_tp.set_title("Throughput, each against its baseline in the same run")
        ax_tp.set_xlim(0, max(b[1] for b in bars) * 1.45)

    date = next((v.get("date") for v in results.values() if v.get("date")), "")
    scale = next((v.get("scale") for v in results.values() if "scale" in v), "")
    fig.suptitle(
        f"Fairway benchmarks, {date[:10]}, scale {scale}, 2-core shared machine"
        " (compare within a panel, not across runs)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    args.target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.target, dpi=110)
    plt.close(fig)
    return [args.target]


if __name__ == "__main__":
    for path in main():
        print(path)
