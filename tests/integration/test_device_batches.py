"""Device batches end to end: a real relay and scheduler on the real broker and database.

A message may carry several readings (a JSON array or ``{"readings": [...]}``). Each is
stored on its own; a bad one is refused with its reason and index while the others are
stored; a batch delivered again (device retry or the broker's redelivery after a relay
crash) is stored once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from fairway.devtools.simulator import Simulator, Summary, weighted_devices
from fairway.kernel import topology
from fairway.kernel.contract import split_reading_id
from tests.harness import Pipeline, management, reading, stored_readings, wait_for


def _ids(pipeline: Pipeline, **query: Any) -> list[str]:
    """Ids of the stored readings matching ``query``, a duplicate as often as stored."""
    return sorted(d["_id"] for d in stored_readings(pipeline.db, query, {"_id": 1}))


@pytest.fixture
def acme(pipeline: Pipeline) -> Pipeline:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    return pipeline


def test_each_reading_is_stored_and_bad_ones_are_refused_with_their_index(
    acme: Pipeline,
) -> None:
    now = time.time()
    array = [
        {"ts": now - 3, "values": {"temp": 20.0}, "id": "a0"},
        {"ts": now - 2, "values": {"temp": [1]}},  # schema
        {"ts": now - 1, "values": {"temp": 21.0}},  # id from the message id: "arr#2"
        {"ts": now + 3600, "values": {"temp": 22.0}},  # clock_skew
        "not a reading",  # schema
    ]
    wrapped = {"readings": [{"ts": now - 1, "values": {"rh": 40}}]}  # no message id
    acme.publish(
        [
            ("dev-1.env", array, {"message_id": "arr"}),
            ("dev-1.power", wrapped, {}),
        ]
    )
    acme.wait_stored(3)
    assert _ids(acme) == sorted(
        ["acme:dev-1:a0", "acme:dev-1:arr#2", f"acme:dev-1:power@{round((now - 1) * 1000)}"]
    )
    [doc] = stored_readings(acme.db, {"_id": "acme:dev-1:arr#2"})
    assert (doc["stream"], doc["values"]) == ("env", {"temp": 21.0})
    assert "msg_id" not in doc  # lean: the message id is in _id only

    rejected = acme.rejected(3)
    assert len(rejected) == 3
    by_index = {h[topology.INDEX_HEADER]: (h, body) for h, body in rejected}
    assert {i: h[topology.REASON_HEADER] for i, (h, _) in by_index.items()} == {
        1: "schema",
        3: "clock_skew",
        4: "schema",
    }
    for index, (headers, body) in by_index.items():
        assert headers[topology.DETAIL_HEADER].startswith(f"reading {index} of 5: ")
        assert headers[topology.DEVICE_HEADER] == "dev-1"
        assert headers[topology.TENANT_HEADER] == "acme"
        assert headers[topology.ROUTING_KEY_HEADER] == "dev-1.env"
        assert body  # the reading as sent
    assert acme.metric("relay", "fairway_relay_accepted_total", tenant="acme") == 3
    assert acme.metric("relay", "fairway_relay_rejected_total", reason="schema") == 2
    assert acme.metric("relay", "fairway_relay_rejected_total", reason="clock_skew") == 1
    assert acme.metric("relay", "fairway_relay_batch_readings_count") == 2


def test_a_batch_refused_whole_is_one_refusal_without_index(acme: Pipeline) -> None:
    assert acme.stop("relay") == 0
    acme.start("relay", max_batch_readings=3)
    batch = [reading() for _ in range(4)]
    acme.publish(
        [
            ("dev-1.env", batch, {}),  # too many readings
            ("ghost.env", batch[:2], {}),  # unknown device
            ("dev-1.env", [], {}),  # empty
        ]
    )
    rejected = acme.rejected(3)
    reasons = sorted(h[topology.REASON_HEADER] for h, _ in rejected)
    assert reasons == ["schema", "too_many_readings", "unknown_device"]
    assert all(topology.INDEX_HEADER not in h for h, _ in rejected)
    acme.publish([("dev-1.env", batch[:3], {"message_id": "ok"})])
    acme.wait_stored(3)


def test_a_batch_sent_again_is_stored_once(acme: Pipeline) -> None:
    now = time.time()
    batch = [{"ts": now - i, "values": {"n": i}} for i in range(10)]
    twice = [("dev-1.env", batch, {"message_id": "b-1"})] * 2  # ids b-1#0 .. b-1#9
    twice += [("dev-1.alt", batch, {})] * 2  # ids alt@<ts in ms>: no message id (MQTT)
    acme.publish(twice)
    wait_for(
        lambda: acme.metric("scheduler", "fairway_scheduler_duplicates_total", tenant="acme") == 20,
        30,
        "the second copies to be counted as duplicates",
    )
    assert acme.stored() == 20
    assert len(_ids(acme, stream="env")) == 10 and len(_ids(acme, stream="alt")) == 10
    assert acme.metric("scheduler", "fairway_scheduler_stored_total", tenant="acme") == 20


@pytest.mark.settings(device_rate=0.01, device_burst=5)
def test_the_device_rate_counts_readings(acme: Pipeline) -> None:
    acme.publish([("dev-1.env", [reading(ts=time.time() - i) for i in range(8)], {})])
    acme.wait_stored(5)
    rejected = acme.rejected(3)
    assert sorted(h[topology.INDEX_HEADER] for h, _ in rejected) == [5, 6, 7]
    assert {h[topology.REASON_HEADER] for h, _ in rejected} == {"rate_limited"}


READINGS = 30_000


class Publisher(threading.Thread):
    """The simulator sending device batches, on a thread (its own pika I/O loop)."""

    def __init__(self, pipeline: Pipeline, devices: list[str], readings: int, batch: int):
        super().__init__(daemon=True)
        self.simulator = Simulator(
            pipeline.settings,
            weighted_devices({"acme": devices}, {}),
            rate=4000,
            total=readings,
            batch=batch,
            progress=False,
        )
        self.summary: Summary | None = None

    def run(self) -> None:
        self.summary = self.simulator.run()


def _redelivered(pipeline: Pipeline, queue: str) -> int:
    path = f"queues/{pipeline.name}/{queue}?columns=message_stats"
    return int(management("GET", path).get("message_stats", {}).get("redeliver", 0))


# The device rate is counted at the relay's receipt: a relay restart slowed by load (3-6 s
# seen beside two CPU burners) leaves each device a backlog the new relay drains faster
# than FAIRWAY_DEVICE_RATE, and past the burst (2,000 readings: 2.5 s of this test's 800
# readings/s per device) the rest was refused as rate_limited and never stored (seen with
# a 4 s restart: ~500 readings in rejected, ~4,500 more dropped past the refusal budget;
# wait_stored could only time out). The rate limit is not what this test is about: a
# burst of every reading sent keeps it out of the way.
@pytest.mark.settings(device_burst=READINGS)
def test_batches_redelivered_after_a_relay_crash_are_stored_once(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    devices = [f"acme-d{i}" for i in range(5)]
    for device in devices:
        pipeline.device("acme", device)
    pipeline.start("relay")
    pipeline.start("scheduler")
    publisher = Publisher(pipeline, devices, readings=READINGS, batch=10)
    publisher.start()
    ingest = topology.tenant_ingest_queue("acme", pipeline.settings).name
    duplicates = 0.0
    # A kill duplicates readings only when it falls between a bundle's publish and its
    # confirm (readings still in an open bundle are simply redelivered): kill often.
    for _ in range(15):
        # Mid-stream: the relay holds deliveries it has published and not yet acked.
        wait_for(
            lambda: pipeline.metric("relay", "fairway_relay_held") > 0 or not publisher.is_alive(),
            30,
            "the relay to hold deliveries",
        )
        pipeline.kill("relay")
        pipeline.start("relay")
        time.sleep(1.0)
        duplicates = pipeline.metric(
            "scheduler", "fairway_scheduler_duplicates_total", tenant="acme"
        )
        if duplicates > 0 or not publisher.is_alive():
            break
    publisher.join(120)
    assert publisher.summary is not None
    messages = READINGS // 10
    assert publisher.summary.confirmed == publisher.summary.sent == messages
    pipeline.wait_stored(READINGS, timeout=180)
    # Ids are <tenant>:<device>:<run>-<message>#<index>: every message's ten readings,
    # from one device, and nothing else (no reading got a second id on redelivery).
    readings: dict[str, set[tuple[str, str]]] = {}
    for _id in _ids(pipeline):
        _tenant, device, msg_id = split_reading_id(_id)
        message, _, index = msg_id.partition("#")
        readings.setdefault(message, set()).add((device, index))
    run = publisher.simulator.run_id
    assert set(readings) == {f"{run}-{n}" for n in range(1, messages + 1)}
    for found in readings.values():
        assert {index for _, index in found} == {str(i) for i in range(10)}
        assert len({device for device, _ in found}) == 1
    # The broker's statistics lag its queues by up to 5 s (collect_statistics_interval).
    wait_for(lambda: _redelivered(pipeline, ingest) > 0, 15, "the broker to count a redelivery")
    # Whether a kill also fell between a bundle's confirm and its originals' ack (so the
    # scheduler saw duplicates) is luck with bundles; test_faults' bundle kill test covers
    # that path. Stored exactly once is what holds either way (checked above).
    assert pipeline.depth(topology.REJECTED) == 0
