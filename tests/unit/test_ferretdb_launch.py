"""The private FerretDBs of tests and benchmarks run with the flags scripts/services.sh uses."""

from __future__ import annotations

import re
from pathlib import Path

from tests import harness

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def test_insert_batch_size_is_the_same_in_services_and_the_harness() -> None:
    script = SERVICES.read_text()
    found = re.search(r"^FERRETDB_INSERT_BATCH=(\d+)$", script, re.MULTILINE)
    assert found is not None, "FERRETDB_INSERT_BATCH not set in scripts/services.sh"
    assert int(found.group(1)) == harness.FERRETDB_INSERT_BATCH
    assert '--test-batch-size="$FERRETDB_INSERT_BATCH"' in script
