"""The queue types every key pipeline test runs on."""

from __future__ import annotations

import pytest

CLASSIC, QUORUM = "classic", "quorum"

# Overrides the ``queue_type`` fixture, which the ``pipeline`` fixture applies.
BOTH = pytest.mark.parametrize("queue_type", [CLASSIC, QUORUM])
