"""benchmarks/reads.py loads, for its baseline, readings in the shape stored before lean
documents: the baseline's queries filter on ``tenant`` and ``device`` (lean readings
lack them, and the baseline read nothing)."""

from __future__ import annotations

from benchmarks import reads
from fairway.kernel.contract import split_reading_id


def test_the_old_shape_is_the_lean_reading_with_tenant_device_and_msg_id() -> None:
    lean = list(reads.readings(3000, 1.0))
    old = list(reads.readings(3000, 1.0, old=True))
    assert len(lean) == len(old) == 3000
    for doc, before in zip(lean, old, strict=True):
        assert "tenant" not in doc and "device" not in doc and "msg_id" not in doc
        tenant, device, message_id = split_reading_id(doc["_id"])
        # key for key and in order, as contract.stored_reading wrote it before lean11
        assert list(before.items()) == [
            ("_id", doc["_id"]),
            ("hk", doc["hk"]),
            ("tenant", tenant),
            ("device", device),
            ("stream", doc["stream"]),
            ("msg_id", message_id),
            ("ts", doc["ts"]),
            ("received", doc["received"]),
            ("values", doc["values"]),
        ]
    # what the baseline's device page asks for finds the hot device's readings
    tenant, device = reads.hot_devices()[0]
    hot = [d for d in old if d["tenant"] == tenant and d["device"] == device]
    assert len(hot) == len(reads.STREAMS) * reads.hot_steps(1.0)
