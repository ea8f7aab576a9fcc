"""Unit tests for the login page's ``next`` check (no open redirect)."""

from __future__ import annotations

import pytest

from web.pages import local_path


@pytest.mark.parametrize("target", ["/", "/devices/boiler-1", "/alerts?x=1", "/a/b#frag"])
def test_local_paths_are_kept(target: str) -> None:
    assert local_path(target) == target


@pytest.mark.parametrize(
    "target",
    [
        "",
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\x7f",
    ],
)
def test_anything_else_goes_home(target: str) -> None:
    assert local_path(target) == "/"
