"""The telemetry documents of one write batch, made with what its readings share.

:func:`fairway.kernel.contract.reading_document` (plus the rollup writer's ``w``) costs
a writer ~4 us per reading, a third of it the hour key's formatting. In a batch most
readings share a device-hour with an earlier one, and the readings of a device batch
share their receipt time: :class:`BatchDocuments` formats a device-hour's key once and
converts an unchanged receipt time once. The documents are equal to
``reading_document``'s, key for key and in the same key order (BSON keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fairway.kernel.batch_document import batch_document, batch_document_id, batch_element
from fairway.kernel.contract import WrittenBatch, hour_key, reading_document, stored_reading

HOUR = timedelta(hours=1)
_fromtimestamp = datetime.fromtimestamp
_NONE = object()  # no receipt time converted yet (equal to no value a reading holds)


class BatchDocuments:
    """Documents of one batch's readings (make one per batch: its caches grow with the
    batch's devices and are dropped with it)."""

    __slots__ = ("_hours", "_received", "_received_dt", "_writer")

    def __init__(self, writer: str | None) -> None:
        self._writer = writer
        # (tenant, device) -> (its hour's start, the next hour's start, the hour key)
        self._hours: dict[tuple[Any, Any], tuple[datetime, datetime, str]] = {}
        self._received: Any = _NONE  # the last receipt time converted, and its datetime
        self._received_dt: datetime | None = None

    def document(self, msg: dict[str, Any]) -> dict[str, Any]:
        """``reading_document(msg)``, stamped ``w`` with the writer unless it is None.

        Raises what ``reading_document`` raises for a reading it cannot convert.
        """
        try:
            ts, hk, received_dt = self.times(msg)
        except TypeError:
            doc = reading_document(msg)  # an unhashable tenant or device: no cache
        else:
            doc = stored_reading(msg, ts, hk, received_dt)
        if self._writer is not None:
            doc["w"] = self._writer
        return doc

    def times(self, msg: dict[str, Any]) -> tuple[datetime, str, datetime]:
        """``msg``'s ``ts`` as a datetime, its hour key and its receipt time as a datetime.

        Raises ``TypeError`` for an unhashable tenant or device, and what ``fromtimestamp``
        raises for a time it cannot convert.
        """
        ts = _fromtimestamp(msg["ts"], UTC)
        tenant, device = msg["tenant"], msg["device"]
        key = (tenant, device)
        hour = self._hours.get(key)
        if hour is None or not hour[0] <= ts < hour[1]:
            start = ts.replace(minute=0, second=0, microsecond=0)
            hour = self._hours[key] = (start, start + HOUR, hour_key(tenant, device, ts))
        received = msg["received"]
        if received == self._received and type(received) is type(self._received):
            received_dt = self._received_dt
        else:
            received_dt = _fromtimestamp(received, UTC)
            self._received, self._received_dt = received, received_dt
        return ts, hour[2], received_dt  # type: ignore[return-value]


# Index parts "0" to "999" (the settings bound a device batch to 1,000 readings): looked
# up, not checked character by character; ``batch_element`` takes up to four digits, and
# any other index still goes through it.
_INDEXES = {str(i): i for i in range(1000)}
# (message index, reading as decoded, its ts as a datetime)
Member = tuple[int, dict[str, Any], datetime]
# (batch index, member, (batch document id, stream), hour key, receipt time)
Placed = tuple[int, Member, tuple[str, Any], str, datetime]


@dataclass(slots=True)
class BatchGroup:
    """The readings of one device batch and hour in a write batch: one batch document.

    Readings come from one or more messages of the write batch (a batch split across
    bundles, or delivered twice); a second reading of an index already held is a copy,
    settled as a duplicate when the document is.
    """

    doc_id: str
    hk: str
    stream: str
    received: datetime
    members: dict[int, Member] = field(default_factory=dict)  # by batch index
    copies: list[tuple[int, Member]] = field(default_factory=list)  # (batch index, member)

    def add(self, index: int, member: Member) -> None:
        """Hold ``member`` as the batch's reading ``index`` (a copy if one is held)."""
        if index in self.members:
            self.copies.append((index, member))
        else:
            self.members[index] = member

    def document(self, writer: str | None) -> dict[str, Any]:
        """The batch document of the held readings (stamped ``w`` unless None)."""
        elements = [
            (index, ts, reading["values"])
            for index, (_, reading, ts) in sorted(self.members.items())
        ]
        doc = batch_document(self.doc_id, self.hk, self.stream, self.received, elements)
        if writer is not None:
            doc["w"] = writer
        return doc

    def split(self) -> list[BatchGroup]:
        """One group per reading held (its copies with it), for a document the database
        refused: the first stored takes the ``_id``, the others then go the way of a
        document stored already, and a bad reading fails alone."""
        alone = {
            index: BatchGroup(self.doc_id, self.hk, self.stream, self.received, {index: member})
            for index, member in self.members.items()
        }
        for index, member in self.copies:
            alone[index].copies.append((index, member))
        return list(alone.values())

    def only(self, indexes: frozenset[int]) -> BatchGroup | None:
        """This group with only the readings (and copies) of ``indexes``; None if none."""
        members = {i: m for i, m in self.members.items() if i in indexes}
        if not members:
            return None
        kept = BatchGroup(self.doc_id, self.hk, self.stream, self.received, members)
        kept.copies = [(i, m) for i, m in self.copies if i in indexes]
        return kept

    def written(self) -> WrittenBatch:
        """What the sink's consumers (rollups, device state, lag) read of the held
        readings once the document is stored: the parts they share, then each member.

        The readings of one group share tenant, device, stream and UTC hour (all are in
        its ``_id``, and tenant and device ids hold no ``:``)."""
        members = list(self.members.values())
        first = members[0][1]
        return first["tenant"], first["device"], self.stream, self.received, members

    def view(self, member: Member) -> dict[str, Any]:
        """What the sink's consumers (rollups, device state, lag) read of a stored reading:
        its reading document's fields they use."""
        reading, ts = member[1], member[2]
        return {
            "stream": self.stream,
            "ts": ts,
            "received": self.received,
            "values": reading["values"],
        }


class BatchGroups:
    """The batch documents of one write batch, by batch id and hour."""

    __slots__ = ("_documents", "_last", "groups")

    def __init__(self, documents: BatchDocuments) -> None:
        self._documents = documents
        self.groups: dict[tuple[str, str], BatchGroup] = {}
        # The last reading's group key, with what it was made of: a device batch's
        # readings come one after another, so the key is made once per batch and hour.
        self._last: tuple[Any, ...] = ()

    def place(self, message: int, reading: dict[str, Any]) -> Placed | None:
        """Where ``reading`` of message ``message`` goes if in a batch document (to
        :meth:`add` once its whole message is known good); None for a reading stored as
        a document of its own.

        Raises what a reading that is not the relay's output raises (``KeyError``,
        ``TypeError``, ...), before anything of its message is held."""
        message_id = reading["id"]
        if "#" not in message_id:
            return None
        batch_id, _, tail = message_id.rpartition("#")
        index = _INDEXES.get(tail)
        if index is None or not batch_id:
            element = batch_element(message_id)
            if element is None:
                return None
            batch_id, index = element
        ts, hk, received = self._documents.times(reading)
        tenant, device, stream = reading["tenant"], reading["device"], reading["stream"]
        last = self._last
        if (
            last
            and last[0] == batch_id
            and last[1] is hk  # the same object: tenant, device and hour unchanged
            and last[2] is tenant
            and last[3] == device
            and type(device) is str
            and last[4] == stream
        ):
            key = last[5]
        else:
            key = (batch_document_id(tenant, device, batch_id, hk), stream)
            hash(key)  # an unhashable stream is refused here, not when the message is held
            self._last = (batch_id, hk, tenant, device, stream, key)
        if "values" not in reading:  # refused here, not when its document is built
            raise KeyError("values")
        return index, (message, reading, ts), key, hk, received

    def add(self, placed: Placed) -> None:
        """Hold a reading :meth:`place` placed."""
        index, member, key, hk, received = placed
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = BatchGroup(key[0], hk, key[1], received)
        group.add(index, member)
