"""Time stamps as text: one format for the API and jobs, one for live events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_z(value: datetime | float) -> str: ...
@overload
def iso_z(value: None) -> None: ...
def iso_z(value: datetime | float | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (API answers, reports, exports); None stays None.

    Epoch seconds are accepted as well as datetimes; a naive datetime is taken as UTC.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_ms(value: datetime | float) -> str:
    """ISO 8601 in UTC with milliseconds and ``+00:00`` (event bodies)."""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")
