"""Validation of tenant, device and user ids.

Ids become queue names (``tenant.<id>``), routing keys (``<device>.<stream>``) and
parts of document ids, so only a small safe alphabet is allowed: lower-case
letters, digits, ``-`` and ``_``, starting with a letter or digit, at most 64 chars.
Streams follow the same rule.

Some ids are *reserved*: a device id is a broker user name, and RabbitMQ closes
connections, applies limits and answers logins by user name, so a device (or a
tenant or user, to avoid confusion in logs and the UI) must never be called like
one of Fairway's own service accounts or a well-known administrative name.
"""

from __future__ import annotations

import re

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # JSON schema form of the rule (request models)
_ID = re.compile(ID_PATTERN[1:-1])

# Broker users of Fairway's own processes (docker-compose.yml, ansible/roles/rabbitmq,
# scripts/services.sh: guest) and names an operator expects to be administrative.
SERVICE_ACCOUNTS = frozenset({"guest", "fairway", "fairway-web", "admin"})
RESERVED_IDS = SERVICE_ACCOUNTS | frozenset({"administrator", "root", "rabbitmq"})
RESERVED_PREFIXES = ("fairway-", "fairway_", "rabbitmq-", "rabbitmq_")
RESERVED_ID = "reserved_id"  # the stable reason code of a refused reserved id


class ReservedIdError(ValueError):
    """An id that is well-formed but reserved (``reason`` is ``reserved_id``)."""

    reason = RESERVED_ID


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a usable tenant, device or stream id."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def is_reserved_id(value: object) -> bool:
    """True when ``value`` names (or could name) a service account: never a device."""
    if not isinstance(value, str):
        return False
    lowered = value.lower()
    return lowered in RESERVED_IDS or lowered.startswith(RESERVED_PREFIXES)


def check_id(kind: str, value: str) -> str:
    """Return ``value`` or raise ValueError naming what is wrong with it."""
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {kind} id {value!r}: use 1-64 characters from a-z, 0-9, '-' and '_',"
            " starting with a letter or digit"
        )
    return value


def check_new_id(kind: str, value: str) -> str:
    """:func:`check_id` for an id about to be created: reserved ids are refused too."""
    check_id(kind, value)
    if is_reserved_id(value):
        raise ReservedIdError(
            f"{kind} id {value!r} is reserved (service accounts and administrative names"
            " such as guest, admin, root, fairway and fairway-* cannot be used)"
        )
    return value
