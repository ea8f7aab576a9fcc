"""Unit tests for the telemetry message contract in ``fairway.kernel.contract``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from fairway.kernel.contract import (
    Reading,
    check_values,
    hour_key,
    parse_reading,
    reading_id,
    split_reading_id,
    split_routing_key,
    tenant_id_range,
    tenant_message,
    to_document,
)
from fairway.kernel.reasons import Reason, Rejection
from fairway.kernel.settings import Settings

SETTINGS = Settings()
TS = 1795487400  # 2026-11-24T02:30:00Z
NOW = float(TS)
RK = "dev-1.env"


def body(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"ts": TS, "values": {"temp": 21.5}}
    doc.update(fields)
    return orjson.dumps(doc)


def parse(
    data: bytes,
    routing_key: str = RK,
    *,
    settings: Settings = SETTINGS,
    message_id: str | None = None,
    user_id: str | None = None,
    now: float = NOW,
) -> Reading:
    return parse_reading(
        routing_key, data, settings, message_id=message_id, user_id=user_id, now=now
    )


def refused(data: bytes, reason: Reason, routing_key: str = RK, **kwargs: Any) -> Rejection:
    with pytest.raises(Rejection) as info:
        parse(data, routing_key, **kwargs)
    exc = info.value
    assert exc.reason is reason, exc.detail
    assert isinstance(exc.detail, str)
    assert exc.detail.strip(), "detail must be a non-empty sentence"
    assert str(exc) == f"{reason}: {exc.detail}"
    return exc


# -- too_large -------------------------------------------------------------------------


def test_too_large() -> None:
    settings = Settings(max_message_bytes=100)
    exc = refused(b"x" * 101, Reason.TOO_LARGE, settings=settings)
    assert "101" in exc.detail and "100" in exc.detail


def test_size_limit_is_inclusive() -> None:
    settings = Settings(max_message_bytes=100)
    data = body()
    padded = data[:-1] + b" " * (100 - len(data)) + b"}"
    assert len(padded) == 100
    assert parse(padded, settings=settings).values == {"temp": 21.5}


def test_size_checked_before_routing_key_and_identity() -> None:
    settings = Settings(max_message_bytes=10)
    refused(b"x" * 11, Reason.TOO_LARGE, "BAD KEY", settings=settings, user_id="other")


def test_default_size_limit() -> None:
    refused(b" " * (SETTINGS.max_message_bytes + 1), Reason.TOO_LARGE)


# -- bad_routing_key -------------------------------------------------------------------


@pytest.mark.parametrize(
    "routing_key",
    [
        "",
        "dev-1",  # no stream
        "dev-1.",  # empty stream
        ".env",  # empty device
        ".",
        "Dev-1.env",  # upper case device
        "dev-1.ENV",  # upper case stream
        "a" * 65 + ".env",  # 65-char device id
        "dev-1." + "s" * 65,  # 65-char stream
        "dev-1.env.extra",  # dot in stream
        "-dev.env",  # must start with letter or digit
        "_dev.env",
        "dev 1.env",
        "dev/1.env",
        "dév.env",
        "dev-1.env\n",
    ],
)
def test_bad_routing_key(routing_key: str) -> None:
    exc = refused(body(), Reason.BAD_ROUTING_KEY, routing_key)
    assert "routing key" in exc.detail


def test_routing_key_64_char_ids_accepted() -> None:
    r = parse(body(), "a" * 64 + "." + "b" * 64)
    assert (r.device, r.stream) == ("a" * 64, "b" * 64)


def test_routing_key_checked_before_body() -> None:
    refused(b"not json", Reason.BAD_ROUTING_KEY, "NOPE")


def test_a_routing_key_answers_the_same_every_time() -> None:
    """The split is cached: a key refused (or accepted) once is refused (accepted) again,
    and a cache overflowing with other keys changes no answer."""
    for _ in range(2):
        refused(body(), Reason.BAD_ROUTING_KEY, "Dev-1.env")
        assert split_routing_key("dev-1.env") == ("dev-1", "env")
    for i in range(5000):
        assert split_routing_key(f"d{i}.s") == (f"d{i}", "s")
    refused(body(), Reason.BAD_ROUTING_KEY, "Dev-1.env")
    assert split_routing_key("dev-1.env") == ("dev-1", "env")


# -- identity_mismatch -----------------------------------------------------------------


def test_identity_mismatch() -> None:
    exc = refused(body(), Reason.IDENTITY_MISMATCH, user_id="dev-2")
    assert "dev-2" in exc.detail and "dev-1" in exc.detail


def test_identity_checked_before_body_is_decoded() -> None:
    refused(b"\xff garbage", Reason.IDENTITY_MISMATCH, user_id="intruder")


def test_identity_match_and_absent_user_accepted() -> None:
    assert parse(body(), user_id="dev-1").device == "dev-1"
    assert parse(body(), user_id=None).device == "dev-1"


# -- malformed_json --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe\x00",  # invalid UTF-8
        b'{"ts": 1795487400, "values": {"s": "\xc3\x28"}}',  # invalid UTF-8 in a string
        b"\x00\x01\x02garbage",
        b"not json",
        b'{"ts": 1795487400, "values": {"temp": 2',  # truncated
        b'{"ts": 1795487400, "values": {"temp": 21.5}',  # missing brace
        b'{"ts": NaN, "values": {"temp": 1}}',
        b'{"ts": 1795487400, "values": {"temp": NaN}}',
        b'{"ts": 1795487400, "values": {"temp": Infinity}}',
        b'{"ts": 1795487400, "values": {"temp": -Infinity}}',
        b'{"ts": 1795487400, "values": {"temp": 1}} trailing',
        b"{'ts': 1795487400}",  # single quotes
    ],
)
def test_malformed_json(data: bytes) -> None:
    exc = refused(data, Reason.MALFORMED_JSON)
    assert exc.detail.startswith("body is not JSON")


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    nested = b"[" * 2000 + b"]" * 2000
    data = b'{"ts": 1795487400, "values": {"deep": ' + nested + b"}}"
    refused(data, Reason.MALFORMED_JSON)
    refused(b"[" * 2000 + b"]" * 2000, Reason.MALFORMED_JSON)


# -- schema: body shape ----------------------------------------------------------------


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"42", b"null", b"true", b"[]"])
def test_non_object_body(data: bytes) -> None:
    exc = refused(data, Reason.SCHEMA)
    assert exc.detail == "body must be a JSON object"


def test_missing_ts() -> None:
    exc = refused(orjson.dumps({"values": {"a": 1}}), Reason.SCHEMA)
    assert "'ts'" in exc.detail


def test_missing_values() -> None:
    exc = refused(orjson.dumps({"ts": TS}), Reason.SCHEMA)
    assert "'values'" in exc.detail


def test_empty_object_body() -> None:
    refused(b"{}", Reason.SCHEMA)


def test_unexpected_top_level_field() -> None:
    exc = refused(body(extra=1), Reason.SCHEMA)
    assert "extra" in exc.detail


def test_unexpected_field_reported_even_when_ts_missing() -> None:
    exc = refused(orjson.dumps({"values": {"a": 1}, "tenant": "x"}), Reason.SCHEMA)
    assert "tenant" in exc.detail


# -- schema: values --------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, [], None, "x", 1, [{"a": 1}]])
def test_values_not_a_non_empty_object(values: Any) -> None:
    exc = refused(body(values=values), Reason.SCHEMA)
    assert exc.detail == "'values' must be a non-empty object"


def test_too_many_values_keys() -> None:
    values = {f"k{i}": i for i in range(SETTINGS.max_values + 1)}
    exc = refused(body(values=values), Reason.SCHEMA)
    assert f"{SETTINGS.max_values + 1} keys" in exc.detail


def test_max_values_keys_accepted() -> None:
    values = {f"k{i}": i for i in range(SETTINGS.max_values)}
    assert parse(body(values=values)).values == values


def test_nested_object_value() -> None:
    exc = refused(body(values={"pos": {"lat": 1.0}}), Reason.SCHEMA)
    assert "dict" in exc.detail


def test_list_value() -> None:
    exc = refused(body(values={"samples": [1, 2, 3]}), Reason.SCHEMA)
    assert "list" in exc.detail


def test_null_value() -> None:
    exc = refused(body(values={"temp": None}), Reason.SCHEMA)
    assert "NoneType" in exc.detail


def test_string_too_long() -> None:
    limit = SETTINGS.max_string_value
    exc = refused(body(values={"s": "x" * (limit + 1)}), Reason.SCHEMA)
    assert f"{limit + 1} characters" in exc.detail


def test_string_at_limit_accepted() -> None:
    s = "é" * SETTINGS.max_string_value  # characters, not bytes
    assert parse(body(values={"s": s})).values == {"s": s}


@pytest.mark.parametrize(
    "key",
    ["$where", "$", "a b", "", "k" * 65, "a/b", "ключ", "a\nb", "a$b", "a.b", "."],
)
def test_value_name_not_allowed(key: str) -> None:
    exc = refused(body(values={key: 1}), Reason.SCHEMA)
    assert "value name" in exc.detail


@pytest.mark.parametrize("key", ["temp", "T_1", "x:y", "a-b", "k" * 64, "0"])
def test_value_name_allowed(key: str) -> None:
    assert parse(body(values={key: 1})).values == {key: 1}


@pytest.mark.parametrize(
    "literal",
    [
        b"9223372036854775808",
        b"18446744073709551615",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"123456789012345678901234567890",
    ],
)
def test_int_beyond_signed_64_bits_is_stored_as_a_double(literal: bytes) -> None:
    # JSON numbers are doubles: every integer outside the signed 64-bit range (which
    # BSON cannot hold as an integer) becomes a float, whatever its size.
    data = b'{"ts": 1795487400, "values": {"big": ' + literal + b"}}"
    value = parse(data).values["big"]
    assert type(value) is float
    assert value == float(int(literal))


def test_int64_bounds_accepted() -> None:
    values = {"lo": -(2**63), "hi": 2**63 - 1}
    assert parse(body(values=values)).values == values


def test_value_types_accepted() -> None:
    values = {"t": 21.5, "n": -3, "on": True, "off": False, "s": "ok", "z": 0, "e": 1e300}
    r = parse(body(values=values))
    assert r.values == values
    assert r.values["on"] is True and r.values["off"] is False


# -- schema: ts ------------------------------------------------------------------------


def test_bool_ts() -> None:
    exc = refused(body(ts=True), Reason.SCHEMA)
    assert "'ts'" in exc.detail


def test_naive_rfc3339_ts() -> None:
    exc = refused(body(ts="2026-11-24T02:30:00"), Reason.SCHEMA)
    assert "UTC offset" in exc.detail


@pytest.mark.parametrize(
    "ts",
    ["yesterday", "2026-13-01T00:00:00Z", "", "2026-11-24T25:00:00Z", "x" * 65, None, [TS]],
)
def test_unparseable_ts(ts: Any) -> None:
    exc = refused(body(ts=ts), Reason.SCHEMA)
    assert "'ts'" in exc.detail


@pytest.mark.parametrize("ts", [-1, -0.5, 32503680001, 1e300])
def test_ts_out_of_range(ts: float) -> None:
    exc = refused(body(ts=ts), Reason.SCHEMA, now=32503680000.0)
    assert "out of range" in exc.detail


# -- clock_skew ------------------------------------------------------------------------


def test_clock_skew_future() -> None:
    exc = refused(body(ts=TS + 301), Reason.CLOCK_SKEW)
    assert "future" in exc.detail


def test_clock_skew_future_limit_inclusive() -> None:
    assert parse(body(ts=TS + 300)).ts == TS + 300


def test_clock_skew_too_old() -> None:
    week = 7 * 24 * 3600
    exc = refused(body(ts=TS - week - 1), Reason.CLOCK_SKEW)
    assert "old" in exc.detail
    assert parse(body(ts=TS - week)).ts == TS - week


def test_clock_skew_uses_settings() -> None:
    settings = Settings(max_clock_skew_s=5.0, max_reading_age_s=10.0)
    refused(body(ts=TS + 6), Reason.CLOCK_SKEW, settings=settings)
    refused(body(ts=TS - 11), Reason.CLOCK_SKEW, settings=settings)
    assert parse(body(ts=TS + 5), settings=settings).ts == TS + 5


def test_clock_skew_checked_before_values() -> None:
    refused(body(ts=TS + 10_000, values={}), Reason.CLOCK_SKEW)


# -- accepted readings -----------------------------------------------------------------


def test_accepted_reading_fields() -> None:
    r = parse(body(values={"temp": 21.5, "door_open": False}))
    assert r == Reading(
        device="dev-1",
        stream="env",
        message_id=f"env@{TS * 1000}",
        ts=float(TS),
        values={"temp": 21.5, "door_open": False},
    )


def test_epoch_int_ts() -> None:
    r = parse(body(ts=TS))
    assert r.ts == 1795487400.0
    assert isinstance(r.ts, float)


def test_epoch_float_ts() -> None:
    r = parse(body(ts=TS + 0.25))
    assert r.ts == 1795487400.25


@pytest.mark.parametrize(
    ("ts", "epoch"),
    [
        ("2026-11-24T02:30:00Z", 1795487400.0),
        ("2026-11-24T02:30:00+00:00", 1795487400.0),
        ("2026-11-24T02:30:00.250Z", 1795487400.25),
        ("2026-11-24T04:30:00+02:00", 1795487400.0),
        ("2026-11-24T02:30:00+02:00", 1795480200.0),
        ("2026-11-23T21:30:00-05:00", 1795487400.0),
    ],
)
def test_rfc3339_ts(ts: str, epoch: float) -> None:
    assert parse(body(ts=ts)).ts == epoch


def test_rfc3339_lower_case_z_accepted() -> None:
    # RFC 3339 section 5.6: "T" and "Z" may alternatively be lower case
    assert parse(body(ts="2026-11-24t02:30:00z")).ts == 1795487400.0
    assert parse(body(ts="2026-11-24T02:30:00z")).ts == 1795487400.0


# -- message id ------------------------------------------------------------------------


def test_message_id_property_wins() -> None:
    assert parse(body(id="body-id"), message_id="prop-id").message_id == "prop-id"


def test_message_id_from_body() -> None:
    assert parse(body(id="body-id")).message_id == "body-id"


def test_integer_body_id() -> None:
    assert parse(body(id=42)).message_id == "42"


def test_message_id_derived_from_stream_and_ms() -> None:
    assert parse(body(ts=TS + 0.25)).message_id == "env@1795487400250"
    assert parse(body(ts="2026-11-24T02:30:00.001Z")).message_id == "env@1795487400001"


def test_same_ms_same_derived_id() -> None:
    a = parse(body(ts=TS + 0.0011, values={"v": 1}))
    b = parse(body(ts=TS + 0.0014, values={"v": 2}))
    assert a.message_id == b.message_id == "env@1795487400001"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "tab\t", "é"])
def test_bad_property_message_id(bad: str) -> None:
    exc = refused(body(id="fine"), Reason.SCHEMA, message_id=bad)
    assert "message id" in exc.detail


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, 1.5, True, [1], {"a": 1}])
def test_bad_body_id(bad: Any) -> None:
    exc = refused(body(id=bad), Reason.SCHEMA)
    assert "message id" in exc.detail


def test_message_id_max_length_accepted() -> None:
    assert parse(body(id="x" * 128)).message_id == "x" * 128


def test_null_body_id_falls_back_to_derived() -> None:
    assert parse(body(id=None)).message_id == f"env@{TS * 1000}"


# -- reading_id, tenant_message, to_document -------------------------------------------


def test_reading_id() -> None:
    assert reading_id("acme", "dev-1", "m-7") == "acme:dev-1:m-7"


@pytest.mark.parametrize(
    ("tenant", "device", "message_id"),
    [
        ("acme", "dev-1", "m-7"),
        ("a", "b", "c"),
        ("t_1", "d-2", "env@1795487400250"),
        ("acme", "dev-1", "urn:uuid:1234:5678"),  # a message id may hold ':'
        ("acme", "dev-1", "batch-9#3"),
        ("acme", "dev-1", ":"),
        ("acme", "dev-1", "::"),
        ("0", "0", "~!\"$%&'()*+,-./;<=>?@[]^`{|}"),
    ],
)
def test_split_reading_id_inverts_reading_id(tenant: str, device: str, message_id: str) -> None:
    assert split_reading_id(reading_id(tenant, device, message_id)) == (tenant, device, message_id)


@pytest.mark.parametrize(
    "bad", ["", "acme", "acme:dev-1", "acme:dev-1:", ":dev-1:m", "acme::m", "probe", 7, None]
)
def test_split_reading_id_refuses_what_reading_id_never_makes(bad: object) -> None:
    with pytest.raises(ValueError):
        split_reading_id(bad)


def test_split_reading_id_of_every_contract_message_id() -> None:
    # Any id the contract accepts (printable ASCII, up to max_message_id) round-trips.
    for mid in ("x" * SETTINGS.max_message_id, "".join(map(chr, range(0x21, 0x7F)))):
        r = parse(body(id=mid), user_id="dev-1")
        doc = to_document(tenant_message("t1", r, NOW))
        assert split_reading_id(doc["_id"]) == ("t1", "dev-1", mid)


def test_tenant_id_range_holds_only_that_tenants_readings() -> None:
    low, high = tenant_id_range("ab")
    inside = [reading_id("ab", "d", "m"), reading_id("ab", "zzz", "~~~")]
    inside.append(reading_id("ab", "0", ":"))
    outside = [reading_id("a", "d", "m"), reading_id("abc", "d", "m"), reading_id("ab-1", "d", "m")]
    outside += [reading_id("ab_", "d", "m"), reading_id("b", "d", "m")]
    assert all(low <= i < high for i in inside)
    assert not any(low <= o < high for o in outside)


def test_tenant_message_round_trip() -> None:
    reading = Reading(
        device="dev-1",
        stream="env",
        message_id="m-7",
        ts=1795487400.25,
        values={"temp": 21.5, "ok": True, "n": 3, "s": "x"},
    )
    received = 1795487401.125
    msg = tenant_message("acme", reading, received)
    assert isinstance(msg, bytes)
    assert orjson.loads(msg) == {
        "tenant": "acme",
        "device": "dev-1",
        "stream": "env",
        "id": "m-7",
        "ts": 1795487400.25,
        "received": 1795487401.125,
        "values": {"temp": 21.5, "ok": True, "n": 3, "s": "x"},
    }
    doc = to_document(msg)
    # Lean: tenant, device and message id are in _id only (in this key order).
    assert list(doc) == ["_id", "hk", "stream", "ts", "received", "values"]
    assert doc["_id"] == "acme:dev-1:m-7"
    assert split_reading_id(doc["_id"]) == ("acme", "dev-1", "m-7")
    assert doc["stream"] == "env"
    assert doc["ts"] == datetime(2026, 11, 24, 2, 30, 0, 250000, tzinfo=UTC)
    assert doc["ts"].tzinfo is not None
    assert doc["ts"].utcoffset().total_seconds() == 0
    assert doc["received"] == datetime(2026, 11, 24, 2, 30, 1, 125000, tzinfo=UTC)
    assert doc["received"].utcoffset().total_seconds() == 0
    assert doc["values"] == {"temp": 21.5, "ok": True, "n": 3, "s": "x"}
    assert doc["values"]["ok"] is True
    assert doc["hk"] == "acme:dev-1:2026112402"


def test_parse_then_document_end_to_end() -> None:
    r = parse(body(ts="2026-11-24T04:30:00+02:00", id="abc"), user_id="dev-1")
    doc = to_document(tenant_message("t1", r, NOW + 2))
    assert doc["_id"] == "t1:dev-1:abc"
    assert doc["ts"] == datetime(2026, 11, 24, 2, 30, tzinfo=UTC)
    assert doc["received"] == datetime(2026, 11, 24, 2, 30, 2, tzinfo=UTC)


def test_hour_key_is_the_utc_hour_of_ts_edges_included() -> None:
    edge = datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)
    assert hour_key("acme", "d", edge) == "acme:d:2026112403"
    assert hour_key("acme", "d", edge - timedelta(microseconds=1000)) == "acme:d:2026112402"
    plus_two = timezone(timedelta(hours=2))
    assert (
        hour_key("acme", "d", datetime(2026, 11, 24, 5, 0, tzinfo=plus_two)) == "acme:d:2026112403"
    )
    reading = Reading(
        device="d", stream="env", message_id="m", ts=edge.timestamp(), values={"v": 1}
    )
    assert (
        to_document(tenant_message("acme", reading, edge.timestamp()))["hk"] == "acme:d:2026112403"
    )


def test_message_ids_are_checked_as_the_printable_ascii_pattern_says() -> None:
    # The string-method check stands for ``[\x21-\x7e]+``: same answer for every character
    # alone, leading and trailing, and for the empty id.
    import re

    from fairway.kernel.contract import _printable_ascii

    pattern = re.compile(r"[\x21-\x7e]+")
    for code in range(sys.maxunicode + 1):
        for text in (chr(code), "a" + chr(code), chr(code) + "b"):
            assert _printable_ascii(text) == (pattern.fullmatch(text) is not None), repr(text)
    assert not _printable_ascii("")


def test_a_value_name_refused_once_is_refused_again() -> None:
    # The answer per name is cached: a bad name must stay refused, a good one accepted.
    from fairway.kernel.contract import _short_value_key_ok

    _short_value_key_ok.cache_clear()
    settings = Settings()
    for _ in range(2):
        with pytest.raises(Rejection) as info:
            check_values({"ok": 1.0, "bad.name": 2.0}, settings)
        assert info.value.reason is Reason.SCHEMA
        assert info.value.detail == "value name 'bad.name' is not allowed"
        assert check_values({"ok": 1.0, "n": 2, "on": True, "s": "x"}, settings)["n"] == 2


def test_a_name_too_long_to_be_allowed_is_refused_without_entering_the_cache() -> None:
    from fairway.kernel.contract import _short_value_key_ok

    _short_value_key_ok.cache_clear()
    for i in range(3):
        with pytest.raises(Rejection):
            check_values({"n" * (65 + i): 1.0}, Settings())
    assert _short_value_key_ok.cache_info().currsize == 0
    assert check_values({"n" * 64: 1.0}, Settings())
    assert _short_value_key_ok.cache_info().currsize == 1
