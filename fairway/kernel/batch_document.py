"""One stored document per device batch and hour: the layout, and its readings back.

A device batch's readings have ids ``<batch id>#<index>`` (``contract.parse_message``
derives them from the message's AMQP ``message_id``). Stored one document each, a
10-reading batch costs FerretDB's backend ten rows, ten index entries and ten type
schemas; stored together it costs about a third less database CPU per reading
(``benchmarks/batch_documents.py``, docs/benchmarks.md). The layout::

    {_id: "<tenant>:<device>:<batch id>§<YYYYMMDDHH>", hk, stream,
     ts: <the latest reading's ts>, received, ix: <index of r[0]> | [<index of each r[k]>],
     r: [{ts, values}, ...]}  (+ w, the rollup writer)

* ``§`` is not printable ASCII, which every message id is (``contract.message_id_of``),
  so a batch document's ``_id`` never equals a reading document's.
* A document holds one device-hour (``hk``, as a reading document): a batch spanning an
  hour boundary is one document per hour.
* ``ix`` is an int when the indexes are consecutive from it (the usual, whole batch),
  else the list of each reading's index; ``r`` is in index order.
* ``ts`` is the latest reading's: retention (``ts < cutoff``) never deletes a reading
  early, and a ``hk``/``ts`` index still orders hours.

:func:`readings` turns any stored document, reading or batch, into reading documents
(``{_id: <tenant>:<device>:<message id>, hk, stream, ts, received, values}`` with what
the query projected): every reader of ``telemetry`` reads through it. What is stored
where, and why exactly-once holds, is the sink's (``scheduler.sink``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

BATCH_SEP = "\u00a7"  # §
READINGS = "r"
INDEXES = "ix"
# Longest index taken as a batch element's: settings bound a batch to 1,000 readings.
_MAX_INDEX_DIGITS = 4
# What a reader's projection must add to read both layouts.
BATCH_FIELDS = (READINGS, INDEXES)
# Keys of a batch document that are not shared by its readings.
_OWN = frozenset(("_id", "ts", READINGS, INDEXES))


def batch_element(message_id: str) -> tuple[str, int] | None:
    """``(batch id, index)`` if ``message_id`` is ``<batch id>#<index>`` with the index
    written as ``parse_message`` writes it (decimal, no leading zero); else None."""
    head, sep, tail = message_id.rpartition("#")
    if (
        not sep
        or not head
        or not tail
        or len(tail) > _MAX_INDEX_DIGITS
        or not tail.isascii()
        or not tail.isdigit()
        or (tail[0] == "0" and len(tail) > 1)
    ):
        return None
    return head, int(tail)


def batch_document_id(tenant: str, device: str, batch_id: str, hk: str) -> str:
    """``<tenant>:<device>:<batch id>§<YYYYMMDDHH>`` for the batch's readings in hour ``hk``."""
    return f"{tenant}:{device}:{batch_id}{BATCH_SEP}{hk[-10:]}"


def is_batch_document_id(doc_id: object) -> bool:
    """True for a batch document's ``_id``."""
    return isinstance(doc_id, str) and BATCH_SEP in doc_id


def batch_of_document_id(doc_id: str) -> str:
    """``<tenant>:<device>:<batch id>`` of a batch document's ``_id``."""
    return doc_id.rpartition(BATCH_SEP)[0]


def indexes_of(doc: dict[str, Any]) -> list[int]:
    """The batch index of each reading of batch document ``doc``, in ``r``'s order."""
    ix = doc[INDEXES]
    if isinstance(ix, int):
        return list(range(ix, ix + len(doc[READINGS])))
    return list(ix)


def packed_indexes(indexes: list[int]) -> int | list[int]:
    """``ix`` for readings of these indexes (ascending): the first if consecutive."""
    first = indexes[0]
    if indexes[-1] - first == len(indexes) - 1:
        return first
    return indexes


def batch_document(
    doc_id: str,
    hk: str,
    stream: str,
    received: Any,
    elements: list[tuple[int, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """The stored document of ``elements`` ``(index, ts, values)``, ascending by index,
    of one batch and device-hour (the one place a writer builds it; key order is kept)."""
    return {
        "_id": doc_id,
        "hk": hk,
        "stream": stream,
        "ts": max(ts for _, ts, _ in elements),
        "received": received,
        INDEXES: packed_indexes([i for i, _, _ in elements]),
        READINGS: [{"ts": ts, "values": values} for _, ts, values in elements],
    }


def readings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The reading documents of stored document ``doc``: itself if it holds one reading;
    one per reading of a batch document, with its shared fields, ``_id``
    ``<tenant>:<device>:<batch id>#<index>`` (if ``_id`` was read) and its ``ts`` and
    ``values`` (if ``r`` was read: project :data:`BATCH_FIELDS` with the fields)."""
    elements = doc.get(READINGS)
    if elements is None:
        return [doc]
    shared = {k: v for k, v in doc.items() if k not in _OWN}
    doc_id = doc.get("_id")
    base = None if doc_id is None else batch_of_document_id(doc_id)
    out = []
    for index, element in zip(indexes_of(doc), elements, strict=True):
        reading = {"_id": f"{base}#{index}"} if base is not None else {}
        reading.update(shared)
        reading.update(element)
        out.append(reading)
    return out


def each_reading(docs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The reading documents of every stored document of ``docs``, in their order."""
    for doc in docs:
        if READINGS in doc:
            yield from readings(doc)
        else:
            yield doc


def with_batch_fields(projection: dict[str, Any]) -> dict[str, Any]:
    """``projection`` (an inclusion of reading fields) extended to read batch documents
    too: their ``r`` and ``ix``. An exclusion projection is returned as is."""
    if any(v for k, v in projection.items() if k != "_id"):
        return {**projection, **dict.fromkeys(BATCH_FIELDS, 1)}
    return projection
