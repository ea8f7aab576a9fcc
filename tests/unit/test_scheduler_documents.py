"""The write batch's documents (scheduler.documents): reading_document's, with caches."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fairway.kernel.batch_document import batch_document_id, batch_element
from fairway.kernel.contract import reading_document
from scheduler.documents import BatchDocuments, BatchGroups

HOUR_S = 3600.0


def reading(**changes: Any) -> dict[str, Any]:
    msg = {
        "tenant": "acme",
        "device": "d1",
        "stream": "env",
        "id": "m1",
        "ts": 1_700_000_000.25,
        "received": 1_700_000_001.5,
        "values": {"temp": 21.5, "ok": True},
    }
    msg.update(changes)
    return msg


def expected(msg: dict[str, Any], writer: str | None) -> dict[str, Any]:
    doc = reading_document(msg)
    if writer is not None:
        doc["w"] = writer
    return doc


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, key order included (BSON keeps it), and datetimes in the same zone."""
    return list(a.items()) == list(b.items()) and all(
        getattr(a[k], "tzinfo", None) is getattr(b[k], "tzinfo", None) for k in a
    )


@pytest.mark.parametrize("writer", ["w-1", None])
def test_random_batches_make_reading_documents_exactly(writer: str | None) -> None:
    rng = random.Random(11)
    for _ in range(100):
        make = BatchDocuments(writer)
        base = rng.choice([0.0, 1_699_999_200.0, 1_764_979_200.0])  # hours' starts
        received = base
        for _ in range(rng.randint(1, 60)):
            # Around hour boundaries, to the microsecond's rounding (999999.6 us rounds up).
            ts = (
                base
                + rng.choice([-1, 0, 1, 2]) * HOUR_S
                + rng.choice([0.0, -1e-6, -4e-7, -6e-7, 1e-6, rng.uniform(-HOUR_S, HOUR_S), 1799.5])
            )
            if rng.random() < 0.5:
                received = rng.choice([received, ts, ts + 0.25, int(ts)])
            msg = reading(
                tenant=rng.choice(["a", "b"]),
                device=rng.choice(["d1", "d2"]),
                id=f"m{rng.randint(0, 99)}",
                ts=rng.choice([ts, int(ts)]),
                received=received,
            )
            assert same(make.document(msg), expected(msg, writer)), msg


def test_an_equal_receipt_time_of_another_type_is_converted_again() -> None:
    make = BatchDocuments("w")
    make.document(reading(received=5))
    msg = reading(received=True)  # == 1, not 5; and 5.0 == 5 but is a float
    assert same(make.document(msg), expected(msg, "w"))
    msg = reading(received=5.0)
    assert same(make.document(msg), expected(msg, "w"))


def test_an_unhashable_device_is_made_without_the_cache() -> None:
    msg = reading(device=["d", 1])  # not the relay's output: made as reading_document makes it
    assert same(BatchDocuments("w").document(msg), expected(msg, "w"))


@pytest.mark.parametrize(
    "changes",
    [{"ts": "soon"}, {"received": None}, {"ts": float("nan")}, {"received": 1e300}],
)
def test_what_reading_document_refuses_is_refused(changes: dict[str, Any]) -> None:
    msg = reading(**changes)
    with pytest.raises(Exception) as theirs:
        reading_document(msg)
    with pytest.raises(type(theirs.value)):
        BatchDocuments("w").document(msg)


def test_a_missing_field_raises_key_error() -> None:
    msg = reading()
    del msg["stream"]
    with pytest.raises(KeyError):
        BatchDocuments(None).document(msg)


@pytest.mark.parametrize(
    "message_id",
    [
        "b#0",
        "b#7",
        "b#999",
        "b#1000",
        "b#9999",
        "b#10000",
        "b#05",
        "b#00",
        "#3",
        "b#",
        "b#-1",
        "b#+1",
        "b# 1",
        "b#1 ",
        "b#\u0661",
        "b#1#2",
        "b#1#x",
        "a:b#12",
        "plain",
    ],
)
def test_a_batch_reading_is_placed_as_batch_element_says(message_id: str) -> None:
    placed = BatchGroups(BatchDocuments("w")).place(0, reading(id=message_id))
    element = batch_element(message_id)
    if element is None:
        assert placed is None
    else:
        assert placed is not None and placed[0] == element[1]
        assert placed[2][0] == batch_document_id("acme", "d1", element[0], placed[3])


def test_the_group_key_made_once_per_batch_is_the_key_made_per_reading() -> None:
    rnd = random.Random(11)
    readings = [
        reading(
            tenant=rnd.choice(["acme", "globex"]),
            device=rnd.choice(["d1", "d2"]),
            stream=rnd.choice(["env", "power"]),
            id=f"b{rnd.randrange(3)}#{rnd.randrange(12)}",
            ts=1_700_000_000.25 + rnd.choice([0, 1, HOUR_S, 2 * HOUR_S]),
        )
        for _ in range(400)
    ]
    groups = BatchGroups(BatchDocuments("w"))
    for msg in readings:
        placed = groups.place(0, msg)
        alone = BatchGroups(BatchDocuments("w")).place(0, dict(msg))
        assert placed is not None and alone is not None
        assert placed[2] == alone[2] and placed[0] == alone[0] and placed[3] == alone[3]
