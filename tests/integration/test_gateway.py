"""The push gateway end to end: real RabbitMQ, ``fairway gateway`` as a child process,
and a plain-socket HTTP/SSE client standing in for the browser."""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
from itsdangerous import TimestampSigner

from fairway.devtools.processes import free_port
from fairway.domain import notify, pushtoken
from fairway.kernel import topology
from tests.harness import Pipeline, management, wait_for


# -- a minimal SSE client ------------------------------------------------------------
class Stream:
    """``GET /events`` over a raw socket (HTTP/1.0, so no chunked encoding)."""

    def __init__(
        self,
        port: int,
        token: str | None,
        origin: str | None = None,
        rcvbuf: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        query = "" if token is None else "?token=" + urllib.parse.quote(token)
        head = f"GET /events{query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        if origin:
            head += f"Origin: {origin}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buffer = b""
        status_line = self._line()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self._line().strip()) != "":
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        self.comments = 0

    def _line(self, timeout: float = 30.0) -> str:
        """The next line (without its end); EOFError when the server closed the stream."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)  # TimeoutError leaves the socket usable
            if not chunk:
                raise EOFError("stream closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode().rstrip("\r")

    def body(self) -> Any:
        """The whole (error) body as JSON."""
        self.sock.settimeout(30)
        while chunk := self.sock.recv(65536):
            self.buffer += chunk
        return orjson.loads(self.buffer)

    def event(self, timeout: float = 30.0) -> tuple[str, Any]:
        """The next event as (name, decoded data); TimeoutError if none in time."""
        deadline = time.monotonic() + timeout
        name, data = "message", []
        while True:
            line = self._line(max(0.01, deadline - time.monotonic()))
            if line == "":
                if data:
                    return name, orjson.loads("\n".join(data))
                continue
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])

    def until(self, predicate: Callable[[str, Any], bool], timeout: float = 30.0) -> list:
        """Events up to and including the first that ``predicate`` accepts."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            name, data = self.event(max(0.1, deadline - time.monotonic()))
            seen.append((name, data))
            if predicate(name, data):
                return seen

    def closed_by_server(self, timeout: float = 30.0) -> bool:
        """True once the server ends the stream (EOF or reset), reading what is left."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Hang up, as a closed browser tab does."""
        with suppress(OSError):
            self.sock.close()


# -- helpers ---------------------------------------------------------------------------
@pytest.fixture
def gateway(pipeline: Pipeline) -> Iterator[Callable[..., int]]:
    """Start ``fairway gateway`` on a free port and wait until it is connected."""

    def start(**overrides: Any) -> int:
        port = free_port()
        pipeline.start("gateway", gateway_port=port, **overrides)
        wait_for(lambda: _ready(port), 30, "the gateway to connect to RabbitMQ")
        return port

    yield start
    log = Path(pipeline.workdir) / "gateway.log"
    if log.exists():
        print("--- gateway log (last 30 lines) ---")
        print("\n".join(log.read_text().splitlines()[-30:]))


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def user(pipeline: Pipeline, user_id: str, role: str, tenant: str | None, subs=()) -> set[str]:
    """Create ``user.<id>`` with the bindings of this role; return the bound keys."""
    keys = notify.binding_keys(role, tenant, user_id, list(subs))
    with pipeline.channel() as ch:
        notify.sync_user(ch, user_id, set(), keys)
    return keys


def token(pipeline: Pipeline, user_id: str, tenant: str | None) -> str:
    """A push token as the web app issues it."""
    return pushtoken.issue(pipeline.settings.secret_key, user_id, tenant)


def publish(pipeline: Pipeline, *events: tuple[str, dict]) -> None:
    """Publish (routing key, body) events to ``events`` as the scheduler/monitor do."""
    with pipeline.channel() as ch:
        ch.confirm_delivery()
        for key, body in events:
            ch.basic_publish(
                topology.EVENTS,
                key,
                orjson.dumps(body),
                pika.BasicProperties(content_type="application/json"),
            )


def telemetry(tenant: str, device: str, **extra: Any) -> tuple[str, dict]:
    """A telemetry event."""
    body = {"kind": "telemetry", "tenant": tenant, "device": device, "values": {"t": 1}}
    return f"telemetry.{tenant}.{device}", {**body, **extra}


def job(tenant: str, user_id: str, mark: str) -> tuple[str, dict]:
    """A job event: used as a marker that a stream has seen everything published before."""
    body = {"kind": "job", "tenant": tenant, "user": user_id, "job": mark, "state": "SUCCESS"}
    return f"job.{tenant}.{user_id}", body


def is_job(mark: str) -> Callable[[str, Any], bool]:
    """Predicate: the job event ``mark``."""
    return lambda name, data: name == "job" and data["job"] == mark


def session_queues(pipeline: Pipeline, user_id: str) -> list[str]:
    """Names of the user's session queues at the broker."""
    vhost = urllib.parse.quote(pipeline.name, safe="")
    queues = management("GET", f"queues/{vhost}?columns=name")
    return [q["name"] for q in queues if q["name"].startswith(f"session.{user_id}.")]


@contextmanager
def stream(port: int, tok: str, **kw: Any) -> Iterator[Stream]:
    """An open stream that has received its ``ready`` event."""
    s = Stream(port, tok, **kw)
    try:
        assert s.status == 200, s.body()
        assert s.event()[0] == "ready"
        yield s
    finally:
        s.close()


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# -- tests -------------------------------------------------------------------------------
@pytest.mark.settings(gateway_heartbeat_s=0.5)
def test_subscribe_receive_unsubscribe(pipeline: Pipeline, gateway: Callable[..., int]) -> None:
    keys = user(pipeline, "vic", "viewer", "acme", ["d1"])
    port = gateway()
    web_origin = f"http://127.0.0.1:{pipeline.settings.web_port}"

    with stream(port, token(pipeline, "vic", "acme"), origin=web_origin) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        assert s.headers["access-control-allow-origin"] == web_origin
        (queue,) = session_queues(pipeline, "vic")  # one queue for this connection
        assert pipeline.metric("gateway", "fairway_gateway_sessions") == 1

        # Subscribed device: delivered, with its kind as the event name.
        publish(pipeline, telemetry("acme", "d1", seq=1))
        name, data = s.event()
        assert (name, data["device"], data["seq"]) == ("telemetry", "d1", 1)

        # Not subscribed (another device, or tenant): nothing before the marker.
        publish(
            pipeline,
            telemetry("acme", "d2", seq=2),
            ("alert.acme.d2", {"kind": "alert", "device": "d2"}),
            job("acme", "someone-else", "not-mine"),
            job("acme", "vic", "m1"),
        )
        assert [n for n, _ in s.until(is_job("m1"))] == ["job"]

        # Unsubscribe: one unbind on user.vic; d1 stops, jobs still arrive.
        with pipeline.channel() as ch:
            notify.sync_user(ch, "vic", keys, notify.binding_keys("viewer", "acme", "vic", []))
        publish(pipeline, telemetry("acme", "d1", seq=3), job("acme", "vic", "m2"))
        assert [n for n, _ in s.until(is_job("m2"))] == ["job"]

        # Heartbeats keep idle proxies from closing the stream.
        wait_for(lambda: _comments(s) >= 2, 10, "heartbeats")

    # The browser left: the session queue goes with it.
    wait_for(lambda: not session_queues(pipeline, "vic"), 30, f"{queue} to be deleted")
    wait_for(lambda: pipeline.metric("gateway", "fairway_gateway_sessions") == 0, 30, "sessions 0")
    assert pipeline.metric("gateway", "fairway_gateway_delivered_total") == 3


def _comments(s: Stream) -> int:
    with suppress(TimeoutError):
        s.event(0.3)
    return s.comments


def test_viewer_never_sees_another_tenants_events(
    pipeline: Pipeline, gateway: Callable[..., int]
) -> None:
    user(pipeline, "va", "viewer", "tenant-a", ["d1"])
    user(pipeline, "ab", "admin", "tenant-b")
    port = gateway()
    b_events = [
        telemetry("tenant-b", "d1"),  # same device id, other tenant
        ("alert.tenant-b.d1", {"kind": "alert", "tenant": "tenant-b", "device": "d1"}),
        ("status.tenant-b.d1", {"kind": "status", "tenant": "tenant-b", "device": "d1"}),
        job("tenant-b", "va", "b-job-for-va"),  # the user id alone does not route
    ]
    with (
        stream(port, token(pipeline, "va", "tenant-a")) as viewer,
        stream(port, token(pipeline, "ab", "tenant-b")) as admin,
    ):
        publish(
            pipeline, *b_events, job("tenant-a", "va", "done-a"), job("tenant-b", "ab", "done-b")
        )
        assert [d["job"] for _, d in viewer.until(is_job("done-a"))] == ["done-a"]
        got = admin.until(is_job("done-b"))
        assert [n for n, _ in got] == ["telemetry", "alert", "status", "job"]
        assert all(d["tenant"] == "tenant-b" for _, d in got)


@pytest.mark.settings(gateway_heartbeat_s=0.5)
def test_revoke_mid_stream(pipeline: Pipeline, gateway: Callable[..., int]) -> None:
    user(pipeline, "gone", "viewer", "acme", ["d1"])
    user(pipeline, "stay", "viewer", "acme", ["d1"])  # the control: same device
    port = gateway()
    with (
        stream(port, token(pipeline, "gone", "acme")) as revoked,
        stream(port, token(pipeline, "stay", "acme")) as control,
    ):
        publish(pipeline, telemetry("acme", "d1", seq=1))
        assert revoked.event()[1]["seq"] == 1 and control.event()[1]["seq"] == 1

        with pipeline.channel() as ch:
            notify.remove_user(ch, "gone")
        publish(pipeline, telemetry("acme", "d1", seq=2), job("acme", "stay", "after"))
        assert [n for n, _ in control.until(is_job("after"))] == ["telemetry", "job"]
        # Both queues were routed to in the same publish; the control has its copy, so
        # the revoked stream would have had its own by now. Give it a second anyway.
        with pytest.raises((TimeoutError, EOFError)):  # no event, whether or not closed yet
            revoked.event(timeout=1.0)
        # Then the gateway notices the exchange is gone and ends the stream (the browser
        # reconnects and is refused); the control stream stays open.
        assert revoked.closed_by_server(timeout=30)
        publish(pipeline, job("acme", "stay", "still-here"))
        assert control.until(is_job("still-here"))
    assert pipeline.metric("gateway", "fairway_gateway_revoked_total") == 1

    # A revoked (or unknown) user cannot open a stream, even with a valid token.
    refused = Stream(port, token(pipeline, "gone", "acme"))
    assert refused.status == 403
    assert refused.body()["error"] == "forbidden"
    wait_for(lambda: not session_queues(pipeline, "gone"), 30, "no queue left behind")
    refused_total = "fairway_gateway_refused_total"
    assert pipeline.metric("gateway", refused_total, reason="no_exchange", tenant="acme") == 1


def test_bad_or_expired_token_is_401(
    pipeline: Pipeline, gateway: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    user(pipeline, "ann", "admin", "acme")
    port = gateway()
    now = int(time.time())
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: now - 120)
    expired = token(pipeline, "ann", "acme")
    monkeypatch.undo()
    wrong_key = pushtoken.issue("some-other-secret-key-0123456789", "ann", "acme")

    cases = {"missing": None, "garbage": "x.y.z", "wrong key": wrong_key, "expired": expired}
    for what, tok in cases.items():
        s = Stream(port, tok, origin="http://evil.example")
        assert s.status == 401, what
        assert s.body()["error"] == "unauthorized", what
        assert "access-control-allow-origin" not in s.headers, what
        s.close()
    m = "fairway_gateway_auth_failures_total"
    assert pipeline.metric("gateway", m, reason="missing", tenant="") == 1
    assert pipeline.metric("gateway", m, reason="invalid", tenant="") == 2
    assert pipeline.metric("gateway", m, reason="expired", tenant="") == 1
    assert not session_queues(pipeline, "ann")
    # The same user with a fresh token is let in.
    with stream(port, token(pipeline, "ann", "acme")):
        pass


def test_gateway_restart_and_broker_connection_loss(
    pipeline: Pipeline, gateway: Callable[..., int]
) -> None:
    user(pipeline, "ann", "admin", "acme")
    port = gateway()
    s = Stream(port, token(pipeline, "ann", "acme"))
    assert s.event()[0] == "ready"

    # SIGTERM: the stream ends cleanly, the queue is deleted, the process exits 0.
    assert pipeline.stop("gateway") == 0
    assert s.closed_by_server(timeout=10)
    s.close()
    wait_for(lambda: not session_queues(pipeline, "ann"), 30, "the queue to be deleted")

    port = gateway()
    with stream(port, token(pipeline, "ann", "acme")) as s2:
        publish(pipeline, telemetry("acme", "d9", seq=1))
        assert s2.event()[1]["seq"] == 1

        # The broker drops the gateway's connection (as in a broker restart): streams
        # are closed so browsers reconnect, and the gateway reconnects by itself.
        vhost = urllib.parse.quote(pipeline.name, safe="")
        conns = wait_for(
            lambda: [
                c["name"]
                for c in management("GET", f"vhosts/{vhost}/connections")
                if c.get("client_properties", {}).get("connection_name") == "fairway-gateway"
            ],
            30,
            "the gateway's connection to be listed",
        )
        for name in conns:
            management("DELETE", "connections/" + urllib.parse.quote(name, safe=""))
        assert s2.closed_by_server(timeout=30)
    wait_for(lambda: _ready(port), 60, "the gateway to reconnect")
    with stream(port, token(pipeline, "ann", "acme")) as s3:
        publish(pipeline, telemetry("acme", "d9", seq=2))
        assert s3.event()[1]["seq"] == 2
    assert pipeline.alive("gateway")


@pytest.mark.settings(gateway_client_buffer_bytes=256 * 1024, session_queue_max_length=200)
def test_slow_client_is_disconnected_and_memory_stays_bounded(
    pipeline: Pipeline, gateway: Callable[..., int]
) -> None:
    user(pipeline, "slow", "admin", "acme")
    port = gateway()
    pid = pipeline.procs["gateway"].pid
    s = Stream(port, token(pipeline, "slow", "acme"), rcvbuf=4096)
    assert s.event()[0] == "ready"
    (queue,) = session_queues(pipeline, "slow")
    before = rss_kb(pid)["VmRSS"]

    # The client reads nothing more. Publish 16 KiB events until the gateway gives up
    # on it; an unbounded gateway would hold all of them (up to 64 MiB here).
    padding = "x" * 16 * 1024
    published = 0
    m = "fairway_gateway_slow_disconnects_total"
    peak = before
    while pipeline.metric("gateway", m) == 0 and published < 4096:
        publish(pipeline, *[telemetry("acme", "d1", pad=padding) for _ in range(128)])
        published += 128
        peak = max(peak, rss_kb(pid)["VmRSS"])
    wait_for(lambda: pipeline.metric("gateway", m) == 1, 30, "the slow client to be dropped")
    wait_for(lambda: not session_queues(pipeline, "slow"), 30, f"{queue} to be deleted")
    assert s.closed_by_server(timeout=30)
    s.close()

    # VmRSS, sampled: VmHWM holds the start-up peak (argon2 at import), not ours.
    grown_mb = (max(peak, rss_kb(pid)["VmRSS"]) - before) / 1024
    sent_mb = published * len(padding) / 2**20
    print(f"published {sent_mb:.0f} MiB before the drop; gateway peak RSS grew {grown_mb:.1f} MiB")
    assert grown_mb < 20, f"gateway grew {grown_mb:.1f} MiB for a client that stopped reading"
    assert pipeline.metric("gateway", "fairway_gateway_buffered_bytes") == 0
    assert pipeline.metric("gateway", "fairway_gateway_sessions") == 0
    # Other users are unaffected: a new stream works at once.
    with stream(port, token(pipeline, "slow", "acme")) as fresh:
        publish(pipeline, job("acme", "slow", "after"))
        assert fresh.until(is_job("after"))


def test_a_push_token_opens_one_stream(pipeline: Pipeline, gateway: Callable[..., int]) -> None:
    """A token copied from a URL, a log or a proxy cannot open a second stream."""
    user(pipeline, "ann", "admin", "acme")
    port = gateway()
    tok = token(pipeline, "ann", "acme")
    with stream(port, tok):
        again = Stream(port, tok)  # while the first stream is open
        assert again.status == 401
        assert again.body()["error"] == "token_reused"
        again.close()
    wait_for(lambda: not session_queues(pipeline, "ann"), 30, "the first stream's queue to go")
    later = Stream(port, tok)  # and after it closed
    assert later.status == 401 and later.body()["error"] == "token_reused"
    later.close()
    m = "fairway_gateway_auth_failures_total"
    assert pipeline.metric("gateway", m, reason="reused", tenant="acme") == 2
    assert not session_queues(pipeline, "ann")
    with stream(port, token(pipeline, "ann", "acme")):  # a fresh token is let in
        pass


def test_a_token_signed_before_the_gateway_started_is_refused(
    pipeline: Pipeline, gateway: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted gateway forgot which tokens its previous run saw: it refuses them all."""
    user(pipeline, "ann", "admin", "acme")
    now = int(time.time())
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: now - 2)
    before_start = token(pipeline, "ann", "acme")  # still valid for 58 s
    monkeypatch.undo()
    port = gateway()
    refused = Stream(port, before_start)
    assert refused.status == 401 and refused.body()["error"] == "token_reused"
    refused.close()
    m = "fairway_gateway_auth_failures_total"
    assert pipeline.metric("gateway", m, reason="predates_start", tenant="acme") == 1
    with stream(port, token(pipeline, "ann", "acme")):
        pass


@pytest.mark.settings(gateway_used_tokens_max=2)
def test_used_token_memory_is_bounded_and_fails_closed(
    pipeline: Pipeline, gateway: Callable[..., int]
) -> None:
    user(pipeline, "ann", "admin", "acme")
    port = gateway()
    for _ in range(2):
        with stream(port, token(pipeline, "ann", "acme")):
            pass
    # Two unexpired ids remembered: a third token is refused, not let in unrecorded.
    full = Stream(port, token(pipeline, "ann", "acme"))
    assert full.status == 503 and full.body()["error"] == "token_memory_full"
    full.close()
    m = "fairway_gateway_refused_total"
    assert pipeline.metric("gateway", m, reason="token_memory_full", tenant="acme") == 1


@pytest.mark.settings(gateway_max_sessions_per_user=2, gateway_max_sessions_per_tenant=3)
def test_one_user_or_tenant_cannot_hold_every_stream(
    pipeline: Pipeline, gateway: Callable[..., int]
) -> None:
    for name in ("u1", "u2", "u3"):
        user(pipeline, name, "admin", "noisy")
    user(pipeline, "quiet", "admin", "calm")
    port = gateway()
    m = "fairway_gateway_refused_total"
    opened: list[Stream] = []
    try:
        for name in ("u1", "u1", "u2"):
            opened.append(s := Stream(port, token(pipeline, name, "noisy")))
            assert s.status == 200 and s.event()[0] == "ready"
        # The user's third stream: 429, its cap.
        over_user = Stream(port, token(pipeline, "u1", "noisy"))
        assert over_user.status == 429
        assert over_user.body()["error"] == "user_session_limit"
        over_user.close()
        # Another user of the same tenant, past the tenant's cap of 3: 429 too.
        over_tenant = Stream(port, token(pipeline, "u3", "noisy"))
        assert over_tenant.status == 429
        assert over_tenant.body()["error"] == "tenant_session_limit"
        over_tenant.close()
        assert pipeline.metric("gateway", m, reason="user_session_limit", tenant="noisy") == 1
        assert pipeline.metric("gateway", m, reason="tenant_session_limit", tenant="noisy") == 1

        # Another tenant is not affected: its stream opens and gets its events.
        with stream(port, token(pipeline, "quiet", "calm")) as quiet:
            publish(pipeline, job("calm", "quiet", "still-served"))
            assert quiet.until(is_job("still-served"))

        # A stream closed frees its place in both counts.
        opened.pop(0).close()
        wait_for(lambda: len(session_queues(pipeline, "u1")) == 1, 30, "u1's closed stream")
        wait_for(
            lambda: pipeline.metric("gateway", "fairway_gateway_sessions") == 2, 30, "2 sessions"
        )
        with stream(port, token(pipeline, "u3", "noisy")):
            pass
    finally:
        for s in opened:
            s.close()
