"""``end_to_end --batch-documents``: which drains run, their keys and ratios, and the
benchmarks' count of stored readings in both layouts (``common.stored_tally``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from benchmarks import common, end_to_end
from fairway.kernel import batch_document as bd
from fairway.storage import mongo


def _args(mode: str, layouts: tuple[str, ...] = ("maintained",)) -> Any:
    return SimpleNamespace(batch_documents=mode, layouts=list(layouts))


def test_both_drains_batch10_off_then_on_and_single_once() -> None:
    assert end_to_end.drain_arms(_args("both")) == [
        ("single", "maintained", True),
        ("batch10", "maintained", False),
        ("batch10", "maintained", True),
    ]
    assert end_to_end.drain_key("batch10", "maintained", False) == "batch10_batch_documents_off"
    assert end_to_end.drain_key("batch10", "maintained") == "batch10"


def test_on_and_off_keep_the_scenario_keys_and_plain_is_one_document_per_reading() -> None:
    assert end_to_end.drain_arms(_args("on")) == [
        ("single", "maintained", True),
        ("batch10", "maintained", True),
    ]
    assert end_to_end.drain_arms(_args("off", ("plain", "maintained"))) == [
        ("single", "plain", True),
        ("single", "maintained", False),
        ("batch10", "plain", True),
        ("batch10", "maintained", False),
    ]


def test_on_off_ratios_per_process_and_per_round() -> None:
    def drain(total: float) -> dict[str, Any]:
        return {"cpu_us_per_reading": {"total": total}}

    rounds = {
        "single": [drain(140.0)],
        "batch10": [drain(60.0), drain(70.0)],
        "batch10_batch_documents_off": [drain(80.0), drain(100.0)],
    }
    cpu_us = {
        "single": {"total": 140.0, "database": 40.0},
        "batch10": {"total": 65.0, "database": 20.0},
        "batch10_batch_documents_off": {"total": 90.0, "database": 40.0},
    }
    assert end_to_end.batch_documents_ratios(rounds, cpu_us) == {
        "batch10": {"total": 0.722, "database": 0.5, "rounds": [0.75, 0.7], "rounds_median": 0.725}
    }


class _Db(dict):
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        super().__init__({mongo.TELEMETRY: SimpleNamespace(find=lambda query, fields: docs)})


def test_stored_tally_counts_readings_and_duplicates_across_layouts() -> None:
    batch = bd.batch_document(
        "t:d:b§2026120703", "t:d:2026120703", "env", 0, [(0, 1, {}), (1, 2, {})]
    )
    docs = [
        {"_id": "t:d:warm"},
        {"_id": "t:d:s1"},
        batch,
        {"_id": "t:d:b#1"},  # also in the batch document: a duplicate
    ]
    assert common.stored_tally(_Db(docs), {"t:d:warm"}) == {
        "documents": 3,
        "readings": 4,
        "duplicate_readings": 1,
    }
