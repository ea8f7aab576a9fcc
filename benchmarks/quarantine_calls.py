"""What the quarantine's management-API calls cost the broker, by kind and fleet size.

On a RabbitMQ node of its own, with ``C`` idle AMQP connections open (the fleet), it
times and measures the broker's CPU (``/proc``) over ``--calls`` calls of each kind the
relay's quarantine can make, alternating kinds in rounds:

* ``close_one``: ``DELETE /api/connections/username/<device>`` for a device with no
  connection (the sweep's call per device; RabbitMQ 3.10 scans every tracked connection
  for the user name, twice: once to authorise, once to close);
* ``list_all``: ``GET /api/connections?disable_stats=true&columns=user,vhost`` (every
  tracked connection of the cluster, at once: the one call that can serve every swept
  device).

The sweep's choice follows from the ratio: a list replaces one close per swept device
when it costs less than that many closes (``ingest.quarantine.LIST_FROM``).

    python -m benchmarks.quarantine_calls --connections 10,1000 --calls 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pika

from benchmarks.common import cpu_s, emit, say
from fairway.amqp import management
from tests.harness import LocalNode

KINDS = ("close_one", "list_all")
TARGET_MS = 2.0  # broker CPU a sweep call may cost at 1,000 connections (budget 20/s: 4 %)


def _call(mgmt: str, kind: str) -> None:
    if kind == "close_one":
        management.call_with_headers(
            mgmt, "DELETE", "connections/username/absent-device", {"X-Reason": "bench"}
        )
    else:
        management.call(mgmt, "GET", "connections?disable_stats=true&columns=user,vhost")


def measure(node: LocalNode, connections: int, calls: int, rounds: int) -> dict[str, Any]:
    """Broker CPU and wall time per call of each kind with ``connections`` open."""
    params = pika.URLParameters(node.amqp_url() + "?heartbeat=0")
    fleet = [pika.BlockingConnection(params) for _ in range(connections)]
    try:
        pid = node.pids()[0]
        time.sleep(2.0)
        cpu = dict.fromkeys(KINDS, 0.0)
        wall = dict.fromkeys(KINDS, 0.0)
        for _ in range(rounds):
            for kind in KINDS:
                c0, w0 = cpu_s(pid), time.perf_counter()
                for _ in range(calls // rounds):
                    _call(node.mgmt_url, kind)
                wall[kind] += time.perf_counter() - w0
                cpu[kind] += cpu_s(pid) - c0
        per = calls // rounds * rounds
        return {
            kind: {
                "broker_cpu_ms": round(cpu[kind] / per * 1000, 3),
                "wall_ms": round(wall[kind] / per * 1000, 3),
            }
            for kind in KINDS
        }
    finally:
        for conn in fleet:
            conn.close()


def main() -> None:
    """Run every fleet size on one private node; print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="10,1000")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(x) for x in args.connections.split(",")]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalNode(Path(tmp) / "rabbitmq") as node:
        for size in sizes:
            say(f"{size} connections")
            figures[str(size)] = found = measure(node, size, args.calls, args.rounds)
            found["list_over_close"] = round(
                found["list_all"]["broker_cpu_ms"] / max(found["close_one"]["broker_cpu_ms"], 1e-3),
                2,
            )
    largest = figures[str(max(sizes))]
    emit(
        {
            "benchmark": "quarantine_calls",
            "connections": figures,
            "targets": {
                "close_one_broker_cpu_ms": {
                    "target": TARGET_MS,
                    "value": largest["close_one"]["broker_cpu_ms"],
                    "met": largest["close_one"]["broker_cpu_ms"] <= TARGET_MS,
                },
            },
        }
    )


if __name__ == "__main__":
    main()
