"""The telemetry message contract: what a device sends and what the relay accepts.

A device publishes to the ``telemetry`` exchange with routing key
``<device_id>.<stream>`` and a JSON object body, one reading::

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

A *device batch* carries several readings of one stream in one message: a JSON array
of reading objects, or ``{"readings": [...]}``, 1..``max_batch_readings`` of them
(more: ``too_many_readings``, the whole message refused). Each reading is checked on
its own: the valid ones are accepted, each invalid one is refused with its reason and
its index in the batch (:class:`BadReading`). A reading's id is its own ``id``, else
``<AMQP message_id>#<index>``, else ``<stream>@<ts in ms>``: derived from the message
alone, so a redelivered batch yields the same ids and is stored once.

Everything here is pure: no I/O, so it is unit-tested exhaustively and cheap on the
relay's hot path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from fairway.kernel.ids import ID_PATTERN
from fairway.kernel.reasons import Reason, Rejection
from fairway.kernel.settings import Settings

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# No '.' (FerretDB refuses it in field names) and no '$' (operators): only names both
# MongoDB and FerretDB store as plain fields.
MAX_VALUE_KEY_CHARS = 64
_VALUE_KEY = re.compile(rf"[A-Za-z0-9_:-]{{1,{MAX_VALUE_KEY_CHARS}}}")
_INT64 = 2**63
_TOP_LEVEL = frozenset({"ts", "values", "id"})
# ``<device>.<stream>``, both ids: one match instead of a split and two (ids hold no '.').
_ROUTING_KEY = re.compile(rf"({ID_PATTERN[1:-1]})\.({ID_PATTERN[1:-1]})")
BATCH_KEY = "readings"


# The value types below are not ``frozen``: a frozen dataclass's ``__init__`` sets each
# field through ``object.__setattr__``, about 1 us more per object on the relay's hot
# path. Nothing mutates them after construction.


@dataclass(slots=True)
class Reading:
    """One accepted reading, before the tenant is attached."""

    device: str
    stream: str
    message_id: str
    ts: float
    values: dict[str, Any]


@dataclass(slots=True)
class BadReading:
    """One reading of a device batch refused on its own, and where it was in the batch."""

    index: int
    rejection: Rejection
    element: object  # the reading as the device sent it (decoded JSON)


@dataclass(slots=True)
class Message:
    """One delivery from ``telemetry``, parsed: its accepted and refused readings.

    ``batch`` is False for a single reading object (which is either accepted or refused
    whole, by :func:`parse_message` raising); ``readings`` holds ``(index, reading)`` in
    batch order.
    """

    device: str
    stream: str
    readings: list[tuple[int, Reading]]
    refused: list[BadReading]
    batch: bool

    @property
    def count(self) -> int:
        """Readings the message carried."""
        return len(self.readings) + len(self.refused)


def split_routing_key(routing_key: str) -> tuple[str, str]:
    """Split ``<device>.<stream>`` or refuse with ``bad_routing_key``."""
    parts = _routing_key_parts(routing_key)
    if parts is None:
        raise Rejection(
            Reason.BAD_ROUTING_KEY,
            f"routing key {routing_key[:200]!r} is not '<device_id>.<stream>' of safe ids",
        )
    return parts


@lru_cache(maxsize=4096)
def _routing_key_parts(routing_key: str) -> tuple[str, str] | None:
    """``(device, stream)`` of a well-formed routing key, else None.

    Cached: a device sends under the same few keys, and the match is a fifth of a
    reading's validation (the cache holds answers, not state: any eviction is harmless).
    """
    match = _ROUTING_KEY.fullmatch(routing_key)
    return None if match is None else match.group(1, 2)  # type: ignore[return-value]


@lru_cache(maxsize=4096)
def _short_value_key_ok(key: str) -> bool:
    """Whether a name of at most :data:`MAX_VALUE_KEY_CHARS` may name a value, cached like
    the routing key's answer: a device sends the same few names, and the match was a third
    of checking ``values``. A longer name is refused before the cache (:func:`check_values`),
    so the cache holds short names only (a refused 64 KB name per entry would have made it
    hundreds of megabytes)."""
    return _VALUE_KEY.fullmatch(key) is not None


def _printable_ascii(text: str) -> bool:
    """``text`` is 1+ printable ASCII characters, no spaces (``[\\x21-\\x7e]+``), checked
    with string methods: a third of the regex's cost, and a message id is never repeated."""
    return bool(text) and text.isascii() and text.isprintable() and " " not in text


def parse_ts(raw: object) -> float:
    """Device timestamp as epoch seconds, from a number or an RFC 3339 string."""
    if type(raw) is float:  # what orjson gives for epoch seconds: one identity test
        ts = raw
    elif isinstance(raw, bool):
        raise Rejection(Reason.SCHEMA, "'ts' must be epoch seconds or an RFC 3339 string")
    elif isinstance(raw, int | float):
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
        if len(key) > MAX_VALUE_KEY_CHARS or not _short_value_key_ok(key):
            raise Rejection(Reason.SCHEMA, f"value name {key[:80]!r} is not allowed")
        kind = type(value)
        # Exact types first (what orjson gives): one identity test for the usual float.
        if kind is float:
            if not math.isfinite(value):
                raise Rejection(Reason.SCHEMA, f"value {key!r} is not finite")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
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
    if (
        type(property_id) is str
        and len(property_id) <= settings.max_message_id
        and _printable_ascii(property_id)
    ):
        return property_id  # the usual case (devices set the property), without the loop
    for candidate in (property_id, body_id):
        if candidate is None:
            continue
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            candidate = str(candidate)
        if (
            not isinstance(candidate, str)
            or len(candidate) > settings.max_message_id
            or not _printable_ascii(candidate)
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
    """Validate one single-reading delivery from ``telemetry``; raise :class:`Rejection`.

    Checks run cheapest first. Identity (``user_id`` against the routing key) is
    checked before the body is even decoded, so a spoofing device learns nothing
    about the contract.
    """
    device, stream, doc = _decode(routing_key, body, settings, user_id)
    if not isinstance(doc, dict):
        raise Rejection(Reason.SCHEMA, "body must be a JSON object")
    return _reading(device, stream, doc, message_id, settings, now)


def parse_message(
    routing_key: str,
    body: bytes,
    settings: Settings,
    *,
    message_id: str | None = None,
    user_id: str | None = None,
    now: float,
) -> Message:
    """Validate one delivery from ``telemetry``: a single reading or a device batch.

    Raises :class:`Rejection` for what refuses the whole message (size, routing key,
    identity, JSON, a single reading's contract, a batch's envelope or count); a
    batch's bad readings come back in :attr:`Message.refused` instead.
    """
    device, stream, doc = _decode(routing_key, body, settings, user_id)
    if isinstance(doc, dict) and BATCH_KEY not in doc:
        reading = _reading(device, stream, doc, message_id, settings, now)
        return Message(device, stream, [(0, reading)], [], False)
    elements = _batch_elements(doc, settings)
    if message_id is not None:
        # The property names the batch; its readings' ids are derived from it.
        message_id = message_id_of(message_id, None, stream, 0.0, settings)
    accepted: list[tuple[int, Reading]] = []
    refused: list[BadReading] = []
    for index, element in enumerate(elements):
        try:
            if not isinstance(element, dict):
                raise Rejection(Reason.SCHEMA, "a reading must be a JSON object")
            fallback = None if message_id is None else f"{message_id}#{index}"
            reading = _reading(device, stream, element, None, settings, now, fallback)
        except Rejection as exc:
            detail = f"reading {index} of {len(elements)}: {exc.detail}"
            refused.append(BadReading(index, Rejection(exc.reason, detail), element))
        else:
            accepted.append((index, reading))
    return Message(device, stream, accepted, refused, True)


def check_sender(
    routing_key: str, size: int, max_bytes: int, user_id: str | None
) -> tuple[str, str]:
    """The checks of who sent a message, before its body is read, in their order: size
    (``too_large``), routing key (``bad_routing_key``), identity (``identity_mismatch``).
    Its device and stream, or :class:`Rejection`."""
    if size > max_bytes:
        raise Rejection(Reason.TOO_LARGE, f"body is {size} bytes; at most {max_bytes}")
    device, stream = split_routing_key(routing_key)
    if user_id is not None and user_id != device:
        raise Rejection(
            Reason.IDENTITY_MISMATCH,
            f"connection user {user_id[:80]!r} may not publish as device {device!r}",
        )
    return device, stream


def _decode(
    routing_key: str, body: bytes, settings: Settings, user_id: str | None
) -> tuple[str, str, Any]:
    """Size, routing key, identity, JSON: the checks every message gets, cheapest first."""
    device, stream = check_sender(routing_key, len(body), settings.max_message_bytes, user_id)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejection(Reason.MALFORMED_JSON, f"body is not JSON: {exc}") from None
    return device, stream, doc


def _batch_elements(doc: object, settings: Settings) -> list[Any]:
    """The readings of a batch body (array or ``{"readings": [...]}``), count checked."""
    if isinstance(doc, dict):
        extra = doc.keys() - {BATCH_KEY}
        if extra:
            raise Rejection(
                Reason.SCHEMA, f"unexpected fields next to 'readings': {sorted(extra)[:5]}"
            )
        doc = doc[BATCH_KEY]
        if not isinstance(doc, list):
            raise Rejection(Reason.SCHEMA, "'readings' must be an array of readings")
    elif not isinstance(doc, list):
        raise Rejection(
            Reason.SCHEMA, "body must be a JSON object (one reading) or an array of readings"
        )
    if not doc:
        raise Rejection(Reason.SCHEMA, "the batch holds no readings")
    if len(doc) > settings.max_batch_readings:
        raise Rejection(
            Reason.TOO_MANY_READINGS,
            f"the batch holds {len(doc)} readings; at most {settings.max_batch_readings}",
        )
    return doc


def _reading(
    device: str,
    stream: str,
    doc: dict[str, Any],
    property_id: str | None,
    settings: Settings,
    now: float,
    fallback_id: str | None = None,
) -> Reading:
    """One reading object checked against the contract (schema, clock, values, id)."""
    if not _TOP_LEVEL.issuperset(doc):  # no set built for a good reading
        extra = doc.keys() - _TOP_LEVEL
        raise Rejection(Reason.SCHEMA, f"unexpected fields: {sorted(extra)[:5]}")
    if "ts" not in doc or "values" not in doc:
        raise Rejection(Reason.SCHEMA, "a reading needs 'ts' and 'values'")
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
    body_id = doc.get("id")
    if body_id is None and fallback_id is not None:
        mid = fallback_id
    else:
        mid = message_id_of(property_id, body_id, stream, ts, settings)
    return Reading(device, stream, mid, ts, values)


def reading_id(tenant: str, device: str, message_id: str) -> str:
    """The stored document's ``_id``: redeliveries of one reading map to one id."""
    return f"{tenant}:{device}:{message_id}"


# ``(tenant, device, message id)``: what a stored reading's ``_id`` holds.
ReadingKey = tuple[str, str, str]
# A document the scheduler has just written, with the parts its ``_id`` was built from:
# its consumers take them from here, not from parsing ``_id`` again (~0.4 us a parse).
Written = tuple[ReadingKey, dict[str, Any]]
# The readings of one batch document a writer has just stored: tenant, device, stream
# and receipt time (shared by every reading of a batch and hour), then per reading its
# (message index, reading as decoded, ts): its message id and values are the reading's
# "id" and "values". Its consumers take the shared parts once per document, and build
# nothing per reading (a view per reading cost a writer ~1 us).
WrittenBatch = tuple[str, str, str, datetime, list[tuple[int, dict[str, Any], datetime]]]


def split_reading_id(doc_id: object) -> ReadingKey:
    """``(tenant, device, message id)`` back from a stored reading's ``_id``.

    Tenant and device ids hold no ``:`` (:mod:`fairway.kernel.ids`), a message id may
    (printable ASCII): the first two ``:`` are the separators. Raises ``ValueError``
    for an ``_id`` that is not :func:`reading_id`'s.
    """
    if not isinstance(doc_id, str):
        raise ValueError(f"a stored reading's _id is a string, not {type(doc_id).__name__}")
    parts = doc_id.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        raise ValueError(f"{doc_id[:200]!r} is not '<tenant>:<device>:<message id>'")
    return parts[0], parts[1], parts[2]


def tenant_id_range(tenant: str) -> tuple[str, str]:
    """``[low, high)`` of the ``_id`` of every reading of ``tenant`` (``:`` sorts just
    before ``;``, and a tenant id holds neither)."""
    return f"{tenant}:", f"{tenant};"


def hour_key(tenant: str, device: str, ts: datetime) -> str:
    """The stored reading's hour key ``<tenant>:<device>:<YYYYMMDDHH>`` (UTC hour of ``ts``).

    History and rollups read a device's readings one hour at a time by this key: an
    equality, which FerretDB pushes down to its backend and MongoDB serves by index.
    """
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    # Formatted by hand: strftime costs a writer ~2 us per reading.
    return f"{tenant}:{device}:{ts.year:04d}{ts.month:02d}{ts.day:02d}{ts.hour:02d}"


def tenant_message(tenant: str, reading: Reading, received: float) -> bytes:
    """One reading as a message of its own (the tenant-queue format before bundles).

    Still what ``rejected`` keeps for a reading of a device batch that its tenant queue
    refused, and readable by the scheduler (messages queued before an upgrade).
    """
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


def bundle_part(reading: Reading, received: float) -> bytes:
    """One reading as it sits in a bundle: :func:`tenant_message` less the tenant."""
    return orjson.dumps(
        {
            "device": reading.device,
            "stream": reading.stream,
            "id": reading.message_id,
            "ts": reading.ts,
            "received": received,
            "values": reading.values,
        }
    )


def bundle_head(tenant: str) -> bytes:
    """A bundle's body up to its first reading: ``{"tenant":"<id>","readings":[``."""
    return b'{"tenant":' + orjson.dumps(tenant) + b',"' + BATCH_KEY.encode() + b'":['


BUNDLE_TAIL = b"]}"


def bundle_body(head: bytes, parts: list[bytes]) -> bytes:
    """The body the relay publishes to ``tenant.<id>``: one tenant's readings, in order.

    ``{"tenant": "<id>", "readings": [<bundle_part>, ...]}``; its length is
    ``len(head) + sum(len(parts)) + len(parts) - 1 + len(BUNDLE_TAIL)``.
    """
    return head + b",".join(parts) + BUNDLE_TAIL


def tenant_readings(body: bytes) -> list[dict[str, Any]]:
    """The readings of one tenant-queue message, each with its ``tenant``.

    A bundle (``{"tenant", "readings": [...]}``) or one reading of its own (the format
    before bundles, kept readable for one release). Raises ``ValueError``, ``KeyError``
    or ``TypeError`` for a body that is neither (not the relay's output).
    """
    msg = orjson.loads(body)
    if not isinstance(msg, dict):
        raise TypeError("a tenant-queue message is a JSON object")
    readings = msg.get(BATCH_KEY)
    if readings is None:
        if "tenant" not in msg:
            raise KeyError("tenant")  # neither a bundle nor a reading
        return [msg]
    tenant = msg["tenant"]
    if not isinstance(readings, list) or not readings:
        raise ValueError("a bundle holds a non-empty array of readings")
    for reading in readings:
        reading["tenant"] = tenant
    return readings


def reading_document(msg: dict[str, Any]) -> dict[str, Any]:
    """MongoDB document for one reading of a tenant-queue message (relay output, trusted)."""
    ts = datetime.fromtimestamp(msg["ts"], UTC)
    return stored_reading(
        msg,
        ts,
        hour_key(msg["tenant"], msg["device"], ts),
        datetime.fromtimestamp(msg["received"], UTC),
    )


def stored_reading(
    msg: dict[str, Any], ts: datetime, hk: str, received: datetime
) -> dict[str, Any]:
    """The stored document's layout (its key order is kept by BSON), given ``msg``'s
    converted times and hour key: the one place a writer builds it.

    ``{_id: <tenant>:<device>:<message id>, hk, stream, ts, received, values}``. The
    tenant, device and message id are stored once, in ``_id`` (every field costs the
    database CPU per reading): :func:`split_reading_id` gives them back. Documents
    written before this also carry ``tenant``, ``device`` and ``msg_id`` (the same
    values), so readers take them from ``_id`` and read both shapes alike.
    """
    return {
        "_id": reading_id(msg["tenant"], msg["device"], msg["id"]),
        "hk": hk,
        "stream": msg["stream"],
        "ts": ts,
        "received": received,
        "values": msg["values"],
    }


def to_document(body: bytes) -> dict[str, Any]:
    """MongoDB document for one single-reading tenant-queue message (:func:`tenant_message`)."""
    return reading_document(orjson.loads(body))
