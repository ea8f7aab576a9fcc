"""benchmarks.pg_settings: reading pg_waldump's per-record statistics."""

from __future__ import annotations

from benchmarks.pg_settings import ARMS, GIN_ARMS, parse_waldump_stats

# pg_waldump 15 --stats=record, a few record types, its column runs of spaces squeezed.
WALDUMP = """\
Type N (%) Record size (%) FPI size (%) Combined size (%)
---- - --- ----------- --- -------- --- ------------- ---
XLOG/CHECKPOINT_ONLINE 1 (  0.00) 114 (  0.00) 0 (  0.00) 114 (  0.00)
Heap/INSERT 20000 ( 48.00) 13260000 ( 45.00) 8192 ( 10.00) 13268192 ( 45.00)
Btree/INSERT_LEAF 20000 ( 48.00) 2000000 (  7.00) 600000 ( 85.00) 2600000 (  9.00)
Gin/INSERT 1000 (  4.00) 13800000 ( 48.00) 0 (  0.00) 13800000 ( 46.00)
 -------- -------- -------- --------
Total 41001 29060114 [97.97%] 608192 [2.03%] 29668306 [100%]
"""


def test_totals_and_the_largest_record_types() -> None:
    stats = parse_waldump_stats(WALDUMP)
    assert (stats["records"], stats["record_bytes"], stats["fpi_bytes"]) == (
        41001,
        29060114,
        608192,
    )
    assert list(stats["top"]) == ["Gin/INSERT", "Heap/INSERT", "Btree/INSERT_LEAF"]
    assert stats["top"]["Btree/INSERT_LEAF"] == 2600000


def test_no_output_is_zero() -> None:
    assert parse_waldump_stats("") == {"records": 0, "record_bytes": 0, "fpi_bytes": 0, "top": {}}


def test_every_gin_arm_is_an_arm() -> None:
    assert set(GIN_ARMS) <= set(ARMS)
    assert ARMS["defaults"] == ({}, [], True)
    assert not ARMS["async"][2]  # synchronous_commit off is never a durable candidate
