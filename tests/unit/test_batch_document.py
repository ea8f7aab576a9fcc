"""The batch document layout: element ids, packing of indexes, readings back."""

from datetime import UTC, datetime

import pytest

from fairway.kernel import batch_document as bd
from fairway.kernel.contract import message_id_of, reading_id
from fairway.kernel.settings import Settings

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        ("m1#0", ("m1", 0)),
        ("m1#12", ("m1", 12)),
        ("a#b#3", ("a#b", 3)),
        ("m1#9999", ("m1", 9999)),
        ("m1", None),
        ("#3", None),
        ("m1#", None),
        ("m1#03", None),  # not how parse_message writes an index: a reading id of its own
        ("m1#12345", None),
        ("m1#-1", None),
        ("m1#1x", None),
        ("m1#\u0663", None),  # an Arabic-Indic digit: isdigit, not ASCII
    ],
)
def test_batch_element_takes_only_indexes_parse_message_writes(message_id, expected):
    assert bd.batch_element(message_id) == expected


def test_a_batch_document_id_is_no_reading_id():
    doc_id = bd.batch_document_id("t1", "d1", "m1", "t1:d1:2026120703")
    assert doc_id == "t1:d1:m1\u00a72026120703"
    assert bd.is_batch_document_id(doc_id)
    assert not bd.is_batch_document_id(reading_id("t1", "d1", "m1#0"))
    with pytest.raises(Exception):  # noqa: B017 - the contract refuses it, whatever its type
        message_id_of(doc_id, None, "s", 0.0, Settings())


@pytest.mark.parametrize(
    ("indexes", "packed"), [([0, 1, 2], 0), ([4], 4), ([3, 4, 5], 3), ([0, 2, 3], [0, 2, 3])]
)
def test_indexes_are_packed_when_consecutive(indexes, packed):
    assert bd.packed_indexes(indexes) == packed
    doc = {bd.INDEXES: packed, bd.READINGS: [{}] * len(indexes)}
    assert bd.indexes_of(doc) == indexes


def _doc(indexes):
    elements = [(i, T0.replace(minute=i), {"v": i}) for i in indexes]
    return bd.batch_document(
        bd.batch_document_id("t1", "d1", "m1", "t1:d1:2026120703"),
        "t1:d1:2026120703",
        "s1",
        T0,
        elements,
    )


def test_readings_of_a_batch_document_are_reading_documents():
    doc = _doc([0, 2, 5])
    assert doc["ts"] == T0.replace(minute=5)  # the latest reading's
    assert bd.readings(doc) == [
        {
            "_id": f"t1:d1:m1#{i}",
            "hk": "t1:d1:2026120703",
            "stream": "s1",
            "ts": T0.replace(minute=i),
            "received": T0,
            "values": {"v": i},
        }
        for i in (0, 2, 5)
    ]


def test_readings_keep_what_was_projected():
    doc = _doc([1, 2])
    del doc["_id"], doc["received"], doc["hk"]
    doc["w"] = "writer"
    assert bd.readings(doc) == [
        {"stream": "s1", "w": "writer", "ts": T0.replace(minute=i), "values": {"v": i}}
        for i in (1, 2)
    ]


def test_a_reading_document_reads_as_itself():
    doc = {"_id": "t1:d1:m9", "ts": T0, "values": {}}
    assert bd.readings(doc) == [doc]
    assert list(bd.each_reading([doc, _doc([0])])) == [doc, *bd.readings(_doc([0]))]


def test_projection_gains_the_batch_fields_only_when_it_includes():
    assert bd.with_batch_fields({"ts": 1, "values": 1}) == {
        "ts": 1,
        "values": 1,
        "r": 1,
        "ix": 1,
    }
    assert bd.with_batch_fields({"_id": 0, "hk": 0}) == {"_id": 0, "hk": 0}
