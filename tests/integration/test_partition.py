"""A network partition of one node of a three-node RabbitMQ cluster, mid-run (issue 14).

The cluster is the one of ``test_cluster`` (``scripts/services.sh cluster``, quorum queues,
``pause_minority``), with node 3 in a network namespace of its own
(``FAIRWAY_CLUSTER_NETNS_NODE=3``): its Erlang distribution and epmd traffic go over one
veth link, its clients' over another. ``cluster cut 3`` takes the distribution link down:
nodes 1 and 2 and node 3 stop hearing from each other, silently, while every client still
reaches every node. That is a real partition, not a stopped node: node 3 keeps running,
and only ``pause_minority`` makes it step aside once it counts its peers as down.

During a run as ``test_cluster``'s (devices publishing with confirms, two relays, two
schedulers and a monitor spread over the nodes; the quiet tenant's devices and one
scheduler start on node 3) node 3 is cut off. Then, in turn: the quorum queues it led get
leaders on the majority; node 3 pauses and closes its clients' connections; they fail over
to nodes 1 and 2. The link comes back after ``HOLD_S``; node 3 rejoins by itself. After:
every confirmed reading stored exactly once, nothing refused, every process alive and
connected again by itself, and the figures in ``test-artifacts/cluster.json`` under
``partition``: when node 3 paused and was back (``paused_s``, ``rejoined_s`` after the cut
and after the heal), each client's failover (``failover_s``) and each tenant's longest pause
in storing (``gap_s``).

The devices publish a nacked reading again (``retry_nacked``): RabbitMQ 3.10 nacks a
channel's first publish to a quorum queue when it cannot reach the node it asks to
register the publisher, which a device failing over while the election runs can meet
(``nacked_then_retried`` in the figures; ``nacked``, readings given up, must stay 0).

Erlang's ``net_ticktime`` decides how long a silent peer takes to count as down: 60 s by
default (45-75 s), so a partition costs the minority's clients that long. The test runs the
cluster with ``NET_TICKTIME`` (10 s; the Ansible role's ``rabbitmq_net_ticktime``) to stay
near a minute: the gap it measures is that detection time plus the failover.

Network namespaces need root (``ip netns``, veth) and iproute2 and socat, which
``services.sh`` installs when missing; ``CI`` runs as root. Without root the test fails,
as a missing service does.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from fairway.amqp import management
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from tests.harness import LocalCluster, Pipeline, wait_for
from tests.integration import test_cluster as tc

pytestmark = pytest.mark.cluster

VICTIM = 3  # the node in a network namespace of its own
NET_TICKTIME = 10  # s: a silent peer counts as down after 10-12.5 s
RATE = float(os.environ.get("FAIRWAY_TEST_PARTITION_RATE", "500"))  # loud readings/s
BEFORE_S = 3.0  # publishing before the cut
HOLD_S = 5.0  # the partition lasts until node 3 paused, and this long more
AFTER_S = 3.0  # publishing after node 3 rejoined
# The longest pause in storing any tenant may see: detection (up to 1.25 x net_ticktime)
# and the clients' failover.
GAP_BOUND_S = 1.25 * NET_TICKTIME + tc.GAP_BOUND_S / 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("partition")
    with LocalCluster(state, netns_node=VICTIM, net_ticktime=NET_TICKTIME) as local:
        yield local


@pytest.fixture
def on_cluster(
    cluster: LocalCluster, base_settings: Settings, tmp_path: Path
) -> Iterator[Pipeline]:
    with tc.cluster_pipeline(cluster, base_settings, tmp_path) as pipeline:
        yield pipeline
        cluster.heal(VICTIM)  # a failed test's partition ends before the pipeline's cleanup


def _amqp_answers(port: int) -> bool:
    """True if a broker answers the AMQP protocol header on 127.0.0.1:``port`` (the node's
    forwarder accepts connections whether the node listens or not)."""
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.settimeout(3)
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return s.recv(1) == b"\x01"
    return False


def _moved(pipeline: Pipeline, cluster: LocalCluster, queues: list[str]) -> bool:
    """True if each of ``queues`` has a leader, on another node than the victim."""
    leaders = tc._leaders(pipeline, cluster, "")
    return all(leaders.get(q) not in (None, VICTIM) for q in queues)


def _running(cluster: LocalCluster, via: int) -> list[str]:
    """The nodes node ``via`` sees running (as the management API lists them)."""
    url = cluster.mgmt_url.split(",")[via - 1]
    nodes = management.call(url, "GET", "nodes?columns=name,running")
    return sorted(n["name"] for n in nodes if n.get("running"))


def test_partition_of_the_node_leading_tenant_queues(
    on_cluster: Pipeline, cluster: LocalCluster
) -> None:
    """Node 3, leading tenant queues and serving the quiet tenant's devices and a
    scheduler, is cut off from the other two; the link comes back after it paused."""
    run = tc.ClusterRun(on_cluster, cluster, int(RATE * 600), RATE)  # finish()ed below
    for sim in run.simulators.values():
        # A channel's first publish to a queue whose leader sits on the lost node is
        # nacked (RabbitMQ 3.10): devices that fail over publish those again.
        sim.retry_nacked = True
    leaders = tc._leaders(on_cluster, cluster, "")  # tenant queues, ingest queues, rejected
    led = sorted(q for q, n in leaders.items() if n == VICTIM)
    assert any(q.startswith(topology.TENANT_QUEUE_PREFIX) for q in led), leaders

    run.start()
    time.sleep(BEFORE_S)
    run.mark(f"cut node {VICTIM}")
    cut_at = run.now()
    cluster.cut(VICTIM)
    # The majority elects new leaders for node 3's queues; node 3 pauses (pause_minority).
    wait_for(lambda: _moved(on_cluster, cluster, led), 60, "new leaders on the majority")
    run.mark("leaders on the majority")
    wait_for(lambda: not _amqp_answers(cluster.amqp_port(VICTIM)), 60, f"node {VICTIM} to pause")
    run.mark(f"node {VICTIM} paused")
    paused_s = run.now() - cut_at
    assert _moved(on_cluster, cluster, led)  # and they stay there
    assert cluster.node(VICTIM) not in _running(cluster, 1)
    time.sleep(HOLD_S)

    run.mark(f"heal node {VICTIM}")
    healed_at = run.now()
    cluster.heal(VICTIM)
    every = [cluster.node(n) for n in range(1, cluster.SIZE + 1)]
    wait_for(lambda: _running(cluster, 1) == every, 120, f"node {VICTIM} to rejoin")
    wait_for(lambda: _amqp_answers(cluster.amqp_port(VICTIM)), 60, f"node {VICTIM} to serve")
    run.mark(f"node {VICTIM} back")
    rejoined_s = run.now() - healed_at
    time.sleep(AFTER_S)
    for sim in run.simulators.values():
        sim.finish()

    try:
        figures: dict[str, Any] = run.finish(timeout=120)
    finally:
        for name, sim in run.simulators.items():
            print(f"devices {name}: {sim.summary}")
    run.check_processes()
    assert _running(cluster, VICTIM) == every  # node 3 sees the whole cluster too
    figures.update(
        victim=VICTIM,
        led=led,
        net_ticktime_s=NET_TICKTIME,
        paused_s=round(paused_s, 2),
        rejoined_s=round(rejoined_s, 2),
        failover_s=run.failover(cut_at, healed_at),
        nacked_then_retried={n: s.summary.retried for n, s in run.simulators.items()},
    )
    tc._report("partition", figures)
    assert figures["failover_s"], "no client was on the partitioned node"
    assert all(gap <= GAP_BOUND_S for gap in figures["gap_s"].values()), figures
    assert figures["gap_s"][tc.QUIET] <= figures["slowest_failover_s"] + tc.GAP_SLACK_S, figures
