"""Unit tests for the push gateway's SSE framing (``gateway.service``)."""

from __future__ import annotations

from fairway.kernel.settings import Settings
from gateway.service import _allowed_origins, event_kind, sse_event


def test_event_is_named_and_terminated() -> None:
    assert sse_event(b"job", b'{"a":1}') == b'event: job\ndata: {"a":1}\n\n'


def test_line_breaks_in_a_body_cannot_end_the_event_early() -> None:
    # Pretty-printed JSON from some publisher: every line stays a data line, and no
    # blank line (which would end the event) or injected "event:" field gets through.
    framed = sse_event(b"alert", b'{\r\n"a": 1,\n\n"b": 2\r}')
    assert framed == b'event: alert\ndata: {\ndata: "a": 1,\ndata: \ndata: "b": 2\ndata: }\n\n'
    assert framed.count(b"\n\n") == 1 and framed.endswith(b"\n\n")


def test_kind_comes_from_the_routing_key_and_only_known_kinds_are_names() -> None:
    assert event_kind("telemetry.acme.boiler-7") == b"telemetry"
    assert event_kind("status.acme.d") == b"status"
    assert event_kind("alert.acme.d") == b"alert"
    assert event_kind("job.acme.ann") == b"job"
    assert event_kind("ready.acme.x") == b"message"  # cannot pose as the gateway's own event
    assert event_kind("") == b"message"


def test_default_origin_is_the_web_apps() -> None:
    assert _allowed_origins(Settings(web_host="10.0.0.5", web_port=8080)) == {
        "http://10.0.0.5:8080"
    }
    assert "http://localhost:8080" in _allowed_origins(Settings(web_port=8080))
    configured = Settings(gateway_allowed_origins="https://app.example/, https://b.example")
    assert _allowed_origins(configured) == {"https://app.example", "https://b.example"}
