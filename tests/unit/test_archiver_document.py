"""The rejections document built from a message in ``rejected`` (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from archiver.service import rejection_document
from fairway.kernel import topology

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_relay_refusal_keeps_reason_device_tenant_and_original_routing_key() -> None:
    headers = {
        topology.REASON_HEADER: "schema",
        topology.DETAIL_HEADER: "'values' must be a non-empty object",
        topology.DEVICE_HEADER: "dev-1",
        topology.TENANT_HEADER: "acme",
        topology.ROUTING_KEY_HEADER: "dev-1.env",
    }
    doc = rejection_document("schema.dev-1", headers, b'{"ts": 1, "values": {}}', 1024, AT)
    assert doc == {
        "device": "dev-1",
        "tenant": "acme",
        "reason": "schema",
        "detail": "'values' must be a non-empty object",
        "routing_key": "dev-1.env",
        "at": AT,
        "body": '{"ts": 1, "values": {}}',
        "body_bytes": 23,
    }


def test_body_is_a_bounded_text_excerpt_and_the_original_size_is_kept() -> None:
    headers = {topology.REASON_HEADER: "too_large", topology.SIZE_HEADER: 70000}
    doc = rejection_document("too_large._", headers, b"\xff\xfe" + b"x" * 2000, 100, AT)
    assert len(doc["body"]) == 100 and doc["body"].startswith("\ufffd\ufffd")
    assert doc["body_bytes"] == 70000
    assert doc["device"] is None and doc["tenant"] is None
    assert doc["routing_key"] == "too_large._"


def test_a_dead_letter_names_tenant_device_and_why() -> None:
    body = orjson.dumps({"tenant": "acme", "device": "dev-9", "stream": "env", "values": {}})
    headers = {"x-death": [{"reason": "rejected", "queue": "tenant.acme", "count": 1}]}
    doc = rejection_document("dead_letter.acme", headers, body, 1024, AT)
    assert (doc["reason"], doc["tenant"], doc["device"]) == ("dead_letter", "acme", "dev-9")
    assert doc["detail"] == "dead-lettered (rejected)"
    assert rejection_document("dead_letter.acme", {}, b"not json", 10, AT)["device"] is None


def test_a_message_without_a_reason_is_archived_as_unknown() -> None:
    assert rejection_document("x", None, b"", 10, AT)["reason"] == "unknown"


def test_a_reading_refused_out_of_a_batch_keeps_its_index() -> None:
    headers = {
        topology.REASON_HEADER: "clock_skew",
        topology.DETAIL_HEADER: "reading 3 of 10: 'ts' is 3600 s in the future; at most 300",
        topology.DEVICE_HEADER: "dev-1",
        topology.INDEX_HEADER: 3,
    }
    doc = rejection_document("clock_skew.dev-1", headers, b'{"ts": 1, "values": {}}', 1024, AT)
    assert doc["index"] == 3
    assert doc["detail"].startswith("reading 3 of 10: ")
    assert "index" not in rejection_document("schema.dev-1", {}, b"{}", 1024, AT)
