"""Unit tests for ``fairway.kernel.ids``."""

from __future__ import annotations

from typing import Any

import pytest

from fairway.kernel.ids import check_id, is_valid_id

VALID = ["a", "0", "acme", "dev-1", "dev_1", "9lives", "a-", "a_", "a" * 64, "x0-_y"]
INVALID: list[Any] = [
    "",
    "A",
    "Acme",
    "-a",
    "_a",
    "a" * 65,
    "a.b",
    "a b",
    " a",
    "a\n",
    "\na",
    "é",
    "a/b",
    "a:b",
    "a*",
    "a#",
    None,
    5,
    b"acme",
    ["a"],
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value) is True
    assert check_id("tenant", value) == value


@pytest.mark.parametrize("value", INVALID)
def test_invalid_ids(value: Any) -> None:
    assert is_valid_id(value) is False


@pytest.mark.parametrize("value", ["", "Acme", "a" * 65, "a.b"])
def test_check_id_error_names_kind_and_value(value: str) -> None:
    with pytest.raises(ValueError) as info:
        check_id("device", value)
    message = str(info.value)
    assert message.startswith(f"invalid device id {value!r}:")
    assert "1-64 characters" in message
