"""README.md's configuration table matches the settings declared in the code.

The table is written for people (meanings, prose defaults), so it is checked rather
than generated: every ``FAIRWAY_*`` setting has a row, every row names a setting,
and each row states the real default (the empty ones are described in words).
"""

from __future__ import annotations

import re
from pathlib import Path

from fairway.kernel.settings import Settings, variables

README = Path(__file__).resolve().parents[2] / "README.md"
VARIABLE = re.compile(r"`(FAIRWAY_[A-Z0-9_]+)`")


def configuration_rows() -> list[tuple[list[str], list[str]]]:
    """(variables, defaults) of each row of the table under "## Configuration"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not VARIABLE.search(cells[0]):
            continue
        names = VARIABLE.findall(cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        rows.append((names, defaults))
    return rows


def documented() -> dict[str, str]:
    """Each variable in the table and its default cell (for a row of several, its part)."""
    found: dict[str, str] = {}
    for names, defaults in configuration_rows():
        assert len(defaults) == len(names), f"README.md: {names} need one default each"
        for name, default in zip(names, defaults, strict=True):
            assert name not in found, f"{name} is listed twice in README.md"
            found[name] = default
    return found


def test_readme_lists_every_setting() -> None:
    missing = [v.name for v in variables() if v.name not in documented()]
    assert not missing, f"README.md's configuration table lacks {', '.join(missing)}"


def test_readme_lists_no_unknown_setting() -> None:
    known = {v.name for v in variables()}
    unknown = [name for name in documented() if name not in known]
    assert not unknown, f"README.md's configuration table names unknown {', '.join(unknown)}"


def _stated(cell: str) -> str:
    """The default a cell states: ``300``, ``false``, `` `classic` ``, ``0 (off)`` -> ``0``."""
    cell = re.sub(r"\s*\([^)]*\)$", "", cell.strip())  # a trailing remark in brackets
    code = re.fullmatch(r"`([^`]*)`", cell)
    return code.group(1) if code else cell


def _same(stated: str, default: object) -> bool:
    if isinstance(default, bool):
        return stated == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(stated) == default
        except ValueError:
            return False
    return stated == default


def test_readme_defaults_are_the_real_ones() -> None:
    table, defaults = documented(), Settings()
    wrong = []
    for v in variables():
        default = getattr(defaults, v.attribute)
        # An empty or None default means "derived" or "none"; the README says which in words.
        if v.name not in table or default in ("", None):
            continue
        if not _same(_stated(table[v.name]), default):
            wrong.append(f"{v.name}: README says {table[v.name]!r}, the code {default!r}")
    assert not wrong, "README.md's configuration table has wrong defaults:\n" + "\n".join(wrong)
