"""The telemetry message contract: what a device sends and what the relay accepts.

A device publishes to the ``telemetry`` exchange with routing key
``<device_id>.<stream>`` and a JSON object body::

    {"ts": 1732412345.25, "values": {"temp": 21.5, "door_open": false}, "id": "optional"}

* ``ts``: device timestamp, epoch seconds (int or float) or an RFC 3339 string with
  an offset (``2026-11-24T02:30:00Z``).
* ``values``: flat object, 1..``max_values`` keys; each value a finite number, a
  boolean or a string of at most ``max_string_value`` characters. Integers outside
  the signed 64-bit range are stored as doubles (JSON numbers are doubles).
* ``id`` (optional): the device's message id.

The message id is, in order of preference: the AMQP ``message_id`` property, the
body's ``id``, else ``<stream>@<ts in ms>``. Two readings of one stream with the same
millisecond timestamp and no id are therefore the same reading. Unknown top-level
fields are refused (``schema``) rather than silently dropped.

Everything here is pure: no I/O, so it is unit-tested exhaustively and cheap on the
relay's hot path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fairway.kernel.ids import is_valid_id
from fairway.kernel.reasons import Reason, Rejection
from fairway.kernel.settings import Settings

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# No '.' (FerretDB refuses it in field names) and no '$' (operators): only names both
# MongoDB and FerretDB store as plain fields.
_VALUE_KEY = re.compile(r"[A-Za-z0-9_:-]{1,64}")
_MESSAGE_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_INT64 = 2**63
_TOP_LEVEL = frozenset({"ts", "values", "id"})


@dataclass(slots=True, frozen=True)
class Reading:
    """One accepted reading, before the tenant is attached."""

    device: str
    stream: str
    message_id: str
    ts: float
    values: dict[str, Any]


def split_routing_key(routing_key: str) -> tuple[str, str]:
    """Split ``<device>.<stream>`` or refuse with ``bad_routing_key``."""
    device, dot, stream = routing_key.partition(".")
    if not dot or not is_valid_id(device) or not is_valid_id(stream):
        raise Rejection(
            Reason.BAD_ROUTING_KEY,
            f"routing key {routing_key[:200]!r} is not '<device_id>.<stream>' of safe ids",
        )
    return device, stream


def parse_ts(raw: object) -> float:
    """Device timestamp as epoch seconds, from a number or an RFC 3339 string."""
    if isinstance(raw, bool):
        raise Rejection(Reason.SCHEMA, "'ts' must be epoch seconds or an RFC 3339 string")
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str) and len(raw) <= 64:
        if _RFC3339.fullmatch(raw) is None:
            raise Rejection(
                Reason.SCHEMA, f"'ts' {raw!r} is not an RFC 3339 time with a UTC offset"
            )
        try:
            ts = datetime.fromisoformat(raw.upper()).timestamp()
        except ValueError:
            raise Rejection(Reason.SCHEMA, f"'ts' {raw!r} is not a valid date and time") from None
    else:
        raise Rejection(Reason.SCHEMA, "'ts' must be epoch seconds or an RFC 3339 string")
    if not math.isfinite(ts) or ts < 0 or ts > 32503680000:  # year 3000
        raise Rejection(Reason.SCHEMA, f"'ts' {raw!r} is out of range")
    return ts


def check_values(raw: object, settings: Settings) -> dict[str, Any]:
    """Return the ``values`` object if it is flat, bounded and of allowed types."""
    if not isinstance(raw, dict) or not raw:
        raise Rejection(Reason.SCHEMA, "'values' must be a non-empty object")
    if len(raw) > settings.max_values:
        raise Rejection(
            Reason.SCHEMA, f"'values' has {len(raw)} keys; at most {settings.max_values}"
        )
    for key, value in raw.items():
        if _VALUE_KEY.fullmatch(key) is None:
            raise Rejection(Reason.SCHEMA, f"value name {key[:80]!r} is not allowed")
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                # JSON numbers are doubles; orjson already turns integers beyond 64
                # bits into floats, so do the same for the unsigned 64-bit range.
                raw[key] = float(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise Rejection(Reason.SCHEMA, f"value {key!r} is not finite")
        elif isinstance(value, str):
            if len(value) > settings.max_string_value:
                raise Rejection(
                    Reason.SCHEMA,
                    f"value {key!r} is {len(value)} characters; at most "
                    f"{settings.max_string_value}",
                )
        else:
            raise Rejection(
                Reason.SCHEMA,
                f"value {key!r} is a {type(value).__name__}; use a number, boolean or string",
            )
    return raw


def message_id_of(
    property_id: str | None, body_id: object, stream: str, ts: float, settings: Settings
) -> str:
    """The message id: AMQP property, else body ``id``, else derived from stream and ts."""
    for candidate in (property_id, body_id):
        if candidate is None:
            continue
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            candidate = str(candidate)
        if (
            not isinstance(candidate, str)
            or len(candidate) > settings.max_message_id
            or _MESSAGE_ID.fullmatch(candidate) is None
        ):
            raise Rejection(
                Reason.SCHEMA,
                f"message id must be 1-{settings.max_message_id} printable ASCII characters",
            )
        return candidate
    return f"{stream}@{round(ts * 1000)}"


def parse_reading(
    routing_key: str,
    body: bytes,
    settings: Settings,
    *,
    message_id: str | None = None,
    user_id: str | None = None,
    now: float,
) -> Reading:
    """Validate one delivery from ``telemetry``; raise :class:`Rejection` if refused.

    Checks run cheapest first. Identity (``user_id`` against the routing key) is
    checked before the body is even decoded, so a spoofing device learns nothing
    about the contract.
    """
    if len(body) > settings.max_message_bytes:
        raise Rejection(
            Reason.TOO_LARGE,
            f"body is {len(body)} bytes; at most {settings.max_message_bytes}",
        )
    device, stream = split_routing_key(routing_key)
    if user_id is not None and user_id != device:
        raise Rejection(
            Reason.IDENTITY_MISMATCH,
            f"connection user {user_id[:80]!r} may not publish as device {device!r}",
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejection(Reason.MALFORMED_JSON, f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejection(Reason.SCHEMA, "body must be a JSON object")
    extra = doc.keys() - _TOP_LEVEL
    if extra:
        raise Rejection(Reason.SCHEMA, f"unexpected fields: {sorted(extra)[:5]}")
    if "ts" not in doc or "values" not in doc:
        raise Rejection(Reason.SCHEMA, "body needs 'ts' and 'values'")
    ts = parse_ts(doc["ts"])
    if ts - now > settings.max_clock_skew_s:
        raise Rejection(
            Reason.CLOCK_SKEW,
            f"'ts' is {ts - now:.0f} s in the future; at most {settings.max_clock_skew_s:.0f}",
        )
    if now - ts > settings.max_reading_age_s:
        raise Rejection(
            Reason.CLOCK_SKEW,
            f"'ts' is {now - ts:.0f} s old; at most {settings.max_reading_age_s:.0f}",
        )
    values = check_values(doc["values"], settings)
    mid = message_id_of(message_id, doc.get("id"), stream, ts, settings)
    return Reading(device=device, stream=stream, message_id=mid, ts=ts, values=values)


def reading_id(tenant: str, device: str, message_id: str) -> str:
    """The stored document's ``_id``: redeliveries of one reading map to one id."""
    return f"{tenant}:{device}:{message_id}"


def hour_key(tenant: str, device: str, ts: datetime) -> str:
    """The stored reading's hour key ``<tenant>:<device>:<YYYYMMDDHH>`` (UTC hour of ``ts``).

    History and rollups read a device's readings one hour at a time by this key: an
    equality, which FerretDB pushes down to its backend and MongoDB serves by index.
    """
    return f"{tenant}:{device}:{ts.astimezone(UTC):%Y%m%d%H}"


def tenant_message(tenant: str, reading: Reading, received: float) -> bytes:
    """The body the relay publishes to ``tenant.<id>``: the reading, normalised."""
    return orjson.dumps(
        {
            "tenant": tenant,
            "device": reading.device,
            "stream": reading.stream,
            "id": reading.message_id,
            "ts": reading.ts,
            "received": received,
            "values": reading.values,
        }
    )


def to_document(body: bytes) -> dict[str, Any]:
    """MongoDB document for one tenant-queue message (relay output, trusted)."""
    msg = orjson.loads(body)
    ts = datetime.fromtimestamp(msg["ts"], UTC)
    return {
        "_id": reading_id(msg["tenant"], msg["device"], msg["id"]),
        "hk": hour_key(msg["tenant"], msg["device"], ts),
        "tenant": msg["tenant"],
        "device": msg["device"],
        "stream": msg["stream"],
        "msg_id": msg["id"],
        "ts": ts,
        "received": datetime.fromtimestamp(msg["received"], UTC),
        "values": msg["values"],
    }
