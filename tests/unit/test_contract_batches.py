"""Device batches in the contract (``fairway.kernel.contract.parse_message``).

A message is one reading object, a JSON array of readings or ``{"readings": [...]}``.
The envelope (size, routing key, identity, JSON, shape, count) refuses the whole
message; each reading of a batch is then accepted or refused on its own, with its
index. Ids are derived from the message alone, so a redelivery repeats them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fairway.kernel.contract import Message, parse_message, parse_reading
from fairway.kernel.reasons import Reason, Rejection
from fairway.kernel.settings import Settings

SETTINGS = Settings()
TS = 1795487400  # 2026-11-24T02:30:00Z
NOW = float(TS)
RK = "dev-1.env"


def item(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"ts": TS, "values": {"temp": 21.5}}
    doc.update(fields)
    return doc


def parse(
    doc: Any,
    *,
    settings: Settings = SETTINGS,
    message_id: str | None = None,
    user_id: str | None = None,
    routing_key: str = RK,
) -> Message:
    data = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return parse_message(
        routing_key, data, settings, message_id=message_id, user_id=user_id, now=NOW
    )


def refused_whole(doc: Any, reason: Reason, **kwargs: Any) -> Rejection:
    with pytest.raises(Rejection) as info:
        parse(doc, **kwargs)
    assert info.value.reason is reason, info.value.detail
    return info.value


# -- the two batch forms and the single reading -----------------------------------------


def test_a_single_reading_object_is_not_a_batch() -> None:
    message = parse(item(id="a"))
    assert not message.batch and message.count == 1 and message.refused == []
    [(index, reading)] = message.readings
    assert index == 0
    assert reading == parse_reading(RK, orjson.dumps(item(id="a")), SETTINGS, now=NOW)


@pytest.mark.parametrize(
    "wrap", [lambda xs: xs, lambda xs: {"readings": xs}], ids=["array", "object"]
)
def test_both_batch_forms_carry_readings_in_order(wrap: Any) -> None:
    elements = [item(id=f"r{i}", values={"n": i}) for i in range(5)]
    message = parse(wrap(elements))
    assert message.batch and message.count == 5 and message.refused == []
    assert [i for i, _ in message.readings] == [0, 1, 2, 3, 4]
    assert [r.values for _, r in message.readings] == [{"n": i} for i in range(5)]
    assert {(r.device, r.stream) for _, r in message.readings} == {("dev-1", "env")}


def test_a_batch_of_one_is_a_batch() -> None:
    assert parse([item()]).batch


# -- what refuses the whole message ---------------------------------------------------------


@pytest.mark.parametrize("doc", [[], {"readings": []}])
def test_an_empty_batch_is_refused(doc: Any) -> None:
    assert "no readings" in refused_whole(doc, Reason.SCHEMA).detail


def test_more_readings_than_the_setting_are_refused_whole() -> None:
    settings = Settings(max_batch_readings=3)
    assert parse([item(id=str(i)) for i in range(3)], settings=settings).count == 3
    exc = refused_whole(
        [item(id=str(i)) for i in range(4)], Reason.TOO_MANY_READINGS, settings=settings
    )
    assert "4 readings" in exc.detail and "at most 3" in exc.detail


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"readings": [item()], "ts": TS}, "next to 'readings'"),
        ({"readings": item()}, "'readings' must be an array"),
        ({"readings": None}, "'readings' must be an array"),
        (b'"text"', "array of readings"),
        (b"42", "array of readings"),
        (b"null", "array of readings"),
    ],
)
def test_a_bad_envelope_is_refused_whole(doc: Any, words: str) -> None:
    assert words in refused_whole(doc, Reason.SCHEMA).detail


def test_size_routing_key_identity_and_json_refuse_a_batch_whole() -> None:
    batch = [item(id=str(i)) for i in range(20)]
    small = Settings(max_message_bytes=100)
    refused_whole(batch, Reason.TOO_LARGE, settings=small)
    refused_whole(batch, Reason.BAD_ROUTING_KEY, routing_key="dev-1")
    refused_whole(batch, Reason.IDENTITY_MISMATCH, user_id="dev-2")
    refused_whole(b'[{"ts": 1, "values": {"a": 1}},', Reason.MALFORMED_JSON)


def test_an_invalid_message_id_property_refuses_a_batch_whole() -> None:
    refused_whole([item()], Reason.SCHEMA, message_id="has space")


# -- each reading on its own ---------------------------------------------------------------


def test_bad_readings_are_refused_with_their_index_and_the_rest_accepted() -> None:
    elements = [
        item(id="ok-0"),
        item(values={"a": [1]}),  # schema: a list value
        "not an object",
        item(id="ok-3"),
        item(ts=NOW + 3600),  # clock_skew: an hour ahead
        item(extra=1),  # schema: unknown field
        {"values": {"a": 1}},  # schema: no ts
        item(id="has space"),  # schema: bad id
        item(id="ok-8"),
    ]
    message = parse(elements, message_id="batch-1")
    assert [(i, r.message_id) for i, r in message.readings] == [
        (0, "ok-0"),
        (3, "ok-3"),
        (8, "ok-8"),
    ]
    got = {bad.index: bad.rejection.reason for bad in message.refused}
    assert got == {
        1: Reason.SCHEMA,
        2: Reason.SCHEMA,
        4: Reason.CLOCK_SKEW,
        5: Reason.SCHEMA,
        6: Reason.SCHEMA,
        7: Reason.SCHEMA,
    }
    for bad in message.refused:
        assert bad.rejection.detail.startswith(f"reading {bad.index} of 9: ")
        assert bad.element == elements[bad.index]  # kept as sent, for `rejected`
    assert message.count == 9


def test_a_batch_of_only_bad_readings_is_parsed_not_raised() -> None:
    message = parse([item(values={}), item(values={})])
    assert message.readings == [] and [b.index for b in message.refused] == [0, 1]


# -- ids: derived from the message alone ----------------------------------------------------


def test_reading_ids_prefer_their_own_then_the_message_id_and_index_then_stream_and_ts() -> None:
    elements = [item(id="own"), item(ts=TS + 1), item(ts=TS + 2, id=7)]
    with_property = parse(elements, message_id="m-9")
    assert [r.message_id for _, r in with_property.readings] == ["own", "m-9#1", "7"]
    without = parse(elements)
    assert [r.message_id for _, r in without.readings] == ["own", f"env@{(TS + 1) * 1000}", "7"]


def test_a_redelivered_batch_yields_the_same_ids() -> None:
    elements = [item(ts=TS + i / 10) for i in range(10)]
    for message_id in ("m-1", None):
        first = parse(elements, message_id=message_id)
        again = parse(elements, message_id=message_id)
        ids = [r.message_id for _, r in first.readings]
        assert ids == [r.message_id for _, r in again.readings]
        assert len(set(ids)) == 10


def test_readings_of_one_millisecond_without_ids_are_one_reading() -> None:
    # The single-reading rule: same stream, same millisecond, no id -> the same reading.
    message = parse([item(), item(values={"temp": 3.0})])
    assert len({r.message_id for _, r in message.readings}) == 1
