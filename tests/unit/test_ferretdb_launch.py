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


def test_go_collector_settings_are_the_same_in_services_and_the_harness() -> None:
    script = SERVICES.read_text()
    found = {
        name: re.search(rf"^FERRETDB_{name}=(\S+)$", script, re.MULTILINE)
        for name in ("GOGC", "GOMEMLIMIT")
    }
    assert all(found.values()), "FERRETDB_GOGC / FERRETDB_GOMEMLIMIT not set in services.sh"
    assert {k: m.group(1) for k, m in found.items() if m} == harness.FERRETDB_GO_ENV
    assert 'env GOGC="$FERRETDB_GOGC" GOMEMLIMIT="$FERRETDB_GOMEMLIMIT" "$FERRETDB_BIN"' in script
