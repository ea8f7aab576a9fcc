"""Validation of tenant and device ids.

Ids become queue names (``tenant.<id>``), routing keys (``<device>.<stream>``) and
parts of document ids, so only a small safe alphabet is allowed: lower-case
letters, digits, ``-`` and ``_``, starting with a letter or digit, at most 64 chars.
Streams follow the same rule.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a usable tenant, device or stream id."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(kind: str, value: str) -> str:
    """Return ``value`` or raise ValueError naming what is wrong with it."""
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {kind} id {value!r}: use 1-64 characters from a-z, 0-9, '-' and '_',"
            " starting with a letter or digit"
        )
    return value
