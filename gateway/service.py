"""The push gateway: live events to browsers as Server-Sent Events (``fairway gateway``).

Twisted web server on ``FAIRWAY_GATEWAY_HOST:PORT``:

* ``GET /events?token=<push token>``: one stream per browser tab. The token (signed by
  the web app, :mod:`fairway.domain.pushtoken`) names the user; the gateway opens an AMQP
  channel for the session, declares the session queue (exclusive, auto-delete,
  bounded with ``drop-head``, short TTL; :func:`fairway.domain.notify.session_queue`), binds it
  to ``user.<id>`` and forwards every delivery as an SSE event named by its kind
  (``telemetry``, ``status``, ``alert``, ``job``). The first event, ``ready``, says the
  queue is bound. Nothing is replayed: a reconnecting ``EventSource`` gets a new queue.
* ``GET /healthz`` (the process answers) and ``GET /readyz`` (503 until connected).

Answers (``{"error", "message"}``, each counted by reason and tenant): 401 for a missing,
bad or expired token (``unauthorized``) and for a token used before (``token_reused``:
push tokens are single-use, :class:`fairway.domain.pushtoken.UsedTokens`); 403 when
``user.<id>`` does not exist (unknown or disabled user, see
:func:`fairway.domain.notify.remove_user`); 429 when the user already holds
``FAIRWAY_GATEWAY_MAX_SESSIONS_PER_USER`` streams (``user_session_limit``) or its tenant
``FAIRWAY_GATEWAY_MAX_SESSIONS_PER_TENANT`` (``tenant_session_limit``); 503 while the
broker is unreachable, ``FAIRWAY_GATEWAY_MAX_SESSIONS`` streams are open, or
``FAIRWAY_GATEWAY_USED_TOKENS_MAX`` unexpired token ids are remembered. Every limit is
per gateway process.

Memory stays bounded per session: a channel prefetch of ``FAIRWAY_GATEWAY_PREFETCH``
deliveries, and, when the client's socket stops draining, at most
``FAIRWAY_GATEWAY_CLIENT_BUFFER_BYTES`` held for it; past that the client is
disconnected and counted. Behind the prefetch, the broker keeps at most
``FAIRWAY_SESSION_QUEUE_MAX_LENGTH`` events per session and drops the oldest.

When the broker connection drops, every stream is closed (browsers reconnect by
themselves) and the gateway reconnects with capped backoff. SIGTERM closes streams and
deletes their queues before exiting.
"""

from __future__ import annotations

import logging
import resource as rlimit
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol, cast

import orjson
import pika
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from pika.exceptions import ChannelClosed
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet import ssl as tls
from twisted.internet.interfaces import IPushProducer
from twisted.logger import ILogObserver, STDLibLogObserver, globalLogBeginner
from twisted.web import resource, server
from twisted.web.resource import IResource
from zope.interface import implementer

from fairway.amqp.backoff import Reconnect
from fairway.amqp.connection import Brokers, ca_certificates_pem, uses_tls
from fairway.domain import notify, pushtoken
from fairway.kernel import metrics
from fairway.kernel.ids import check_id
from fairway.kernel.settings import Settings
from gateway.metrics import (
    AMQP_UP,
    AUTH_FAILURES,
    BUFFERED_BYTES,
    DELIVERED,
    REFUSED,
    REVOKED,
    SESSIONS,
    SLOW_DISCONNECTS,
)

log = logging.getLogger(__name__)

HEARTBEAT = b": heartbeat\n\n"
RETRY_MS = 2000  # how long EventSource waits before reconnecting
NOT_FOUND = 404
KINDS = {k: k.encode() for k in ("telemetry", "status", "alert", "job")}


def sse_event(kind: bytes, body: bytes) -> bytes:
    """One SSE event; a body with line breaks becomes several ``data:`` lines."""
    lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"event: " + kind + b"\n" + b"".join(b"data: " + x + b"\n" for x in lines) + b"\n"


def event_kind(routing_key: str) -> bytes:
    """``telemetry.acme.boiler-7`` -> ``telemetry`` (``message`` for an unknown kind)."""
    return KINDS.get(routing_key.partition(".")[0], b"message")


def _json_error(request: server.Request, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return orjson.dumps({"error": code, "message": message})


@implementer(IPushProducer)
class Session:
    """One browser stream and its AMQP channel and queue.

    The session is the HTTP request's push producer: Twisted pauses it when the socket's
    send buffer is full, and events then wait in a bounded local buffer.
    """

    def __init__(
        self, gateway: Gateway, request: server.Request, user: str, tenant: str | None
    ) -> None:
        self.gateway = gateway
        self.request = request
        self.user = user
        self.tenant = tenant
        self.queue = notify.session_queue(gateway.settings, user)
        self.channel: TwistedChannel | None = None
        self.closed = False
        self.client_left = False
        self.streaming = False
        self.paused = False
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self._unacked_tag = 0

    # -- setup -------------------------------------------------------------------
    @defer.inlineCallbacks
    def open(self, connection: TwistedProtocolConnection) -> Any:
        """Channel, queue, binding, consumer; then start the stream."""
        try:
            self.channel = yield connection.channel()
            if self.closed:  # the client left while the channel opened
                self._release_channel()
                return
            # Check first: a failed bind would leave the exclusive queue behind.
            yield self.channel.exchange_declare(exchange=self.queue.exchange, passive=True)
            yield self.channel.basic_qos(prefetch_count=self.gateway.settings.gateway_prefetch)
            yield self.channel.queue_declare(**self.queue.declare_kwargs())
            yield self.channel.queue_bind(
                queue=self.queue.name, exchange=self.queue.exchange, routing_key=""
            )
            consumer, _tag = yield self.channel.basic_consume(queue=self.queue.name)
        except ChannelClosed as exc:
            self._refuse_setup(exc)
            return
        except Exception as exc:
            log.warning("session setup failed", extra={"user": self.user, "why": repr(exc)})
            self._refuse_setup(exc)
            return
        if self.closed:
            self._release_channel()
            return
        self.channel.on_closed.addBoth(self._on_channel_closed)
        self._start_stream()
        self._consume(consumer)

    def _refuse_setup(self, exc: Exception) -> None:
        self.gateway.forget(self)
        if self.closed:
            self._release_channel()
            return
        self.closed = True
        if isinstance(exc, ChannelClosed) and exc.reply_code == NOT_FOUND:
            REFUSED.labels("no_exchange", self.tenant or "").inc()
            log.info("session refused: no user exchange", extra={"user": self.user})
            body = _json_error(
                self.request, 403, "forbidden", "this user has no live notifications"
            )
        else:
            REFUSED.labels("unavailable", self.tenant or "").inc()
            self._release_channel()
            body = _json_error(
                self.request, 503, "unavailable", "notifications are unavailable, retry"
            )
        self.request.write(body)
        self.request.finish()

    def _start_stream(self) -> None:
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")  # no proxy buffering
        request.registerProducer(self, True)
        self.streaming = True
        ready = orjson.dumps({"session": self.queue.name, "user": self.user})
        request.write(b"retry: %d\n\n" % RETRY_MS + sse_event(b"ready", ready))
        log.info("session open", extra={"user": self.user, "queue": self.queue.name})

    # -- delivery ------------------------------------------------------------------
    def _consume(self, consumer: Any) -> None:
        """Take deliveries from pika's queue without recursion: drain, ack once, re-arm."""

        def on_message(message: Any) -> None:
            self._deliver(message)
            while consumer.pending and not self.closed:
                self._deliver(consumer.pending.pop(0))
            self._ack()
            if not self.closed:
                consumer.get().addCallbacks(on_message, on_cancelled)

        def on_cancelled(failure: Any) -> None:
            if not self.closed:
                log.info("consumer cancelled", extra={"user": self.user, "why": str(failure.value)})
                self.close()

        consumer.get().addCallbacks(on_message, on_cancelled)

    def _deliver(self, message: Any) -> None:
        if self.closed:
            return
        self._unacked_tag = message.method.delivery_tag
        self.send(sse_event(event_kind(message.method.routing_key), message.body))
        DELIVERED.inc()

    def _ack(self) -> None:
        # The events are now in our bounded buffer or the socket's: settle them in one go.
        if self._unacked_tag and self.channel is not None and self.channel.is_open:
            self.channel.basic_ack(self._unacked_tag, multiple=True)
        self._unacked_tag = 0

    def send(self, data: bytes) -> None:
        """Write to the client, or hold while its socket is full (bounded: then drop it)."""
        if self.closed or not self.streaming:
            return
        if not self.paused and not self.pending:
            self.request.write(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self.gateway.settings.gateway_client_buffer_bytes:
            SLOW_DISCONNECTS.inc()
            log.warning(
                "slow client disconnected",
                extra={
                    "user": self.user,
                    "queue": self.queue.name,
                    "behind_bytes": self.pending_bytes,
                },
            )
            self.close(abort=True)

    # IPushProducer
    def pauseProducing(self) -> None:
        """The client's socket is full: hold events in the local buffer."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The socket drained: write what was held, until it fills again."""
        self.paused = False
        while self.pending and not self.paused and not self.closed:
            data = self.pending.popleft()
            self.pending_bytes -= len(data)
            self.request.write(data)

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.client_left = True
        self.close(finished=True)

    # -- teardown ------------------------------------------------------------------
    def client_gone(self, _result: Any) -> None:
        """The browser disconnected (or the response finished)."""
        self.client_left = True
        self.close(finished=True)

    def close(self, finished: bool = False, abort: bool = False) -> None:
        """End the stream (unless the client already did) and delete the session queue."""
        if self.closed:
            return
        self.closed = True
        self.gateway.forget(self)
        self.pending.clear()
        self.pending_bytes = 0
        if self.streaming:
            log.info("session closed", extra={"user": self.user, "queue": self.queue.name})
        self._release_channel()
        if finished or self.client_left:
            return
        if self.streaming:
            self.request.unregisterProducer()
        if abort:
            transport = self.request.transport
            if transport is not None:
                transport.abortConnection()
            return
        if not self.streaming:  # still setting up: the broker went away
            REFUSED.labels("unavailable", self.tenant or "").inc()
            self.request.write(
                _json_error(
                    self.request, 503, "unavailable", "notifications are unavailable, retry"
                )
            )
        self.request.finish()

    def _release_channel(self) -> None:
        channel, self.channel = self.channel, None
        if channel is None or not channel.is_open:
            return
        if self.streaming:
            # Closing the channel cancels the consumer; the auto-delete queue goes with it.
            channel.close()
        else:
            # Set-up failed part way: the queue may exist without ever having had a
            # consumer, which auto-delete would not remove.
            channel.queue_delete(queue=self.queue.name).addBoth(lambda _: _close_quietly(channel))

    def _on_channel_closed(self, _reason: Any) -> None:
        self.channel = None
        if not self.closed:
            self.close()


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]  # bounded by the open sessions, not by every user ever seen


def _close_quietly(channel: TwistedChannel) -> None:
    if channel.is_open:
        channel.close()


class Gateway:
    """The broker connection (with reconnects) and the open sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = settings.require_secret()
        self.connection: TwistedProtocolConnection | None = None
        self.sessions: set[Session] = set()
        # Open (or opening) sessions per user and per tenant, for the caps.
        self.per_user: Counter[str] = Counter()
        self.per_tenant: Counter[str] = Counter()
        self.used_tokens = pushtoken.UsedTokens(settings.gateway_used_tokens_max)
        # Tokens signed before this process started may have been used by its previous
        # run, whose record is gone: refused (browsers ask for a new token on any error).
        self.started = int(time.time())
        self.stopping = False
        self.allowed_origins = _allowed_origins(settings)
        self.brokers = Brokers(settings, "fairway-gateway")  # next address after each loss
        self._reconnect = Reconnect("fairway-gateway", _reactor.callLater, self._connect)
        self._heartbeat = task.LoopingCall(self._beat)
        self._checking = False
        # The sessions set is copied in one step: the metrics thread reads it.
        SESSIONS.set_function(lambda: sum(1 for s in list(self.sessions) if s.streaming))
        BUFFERED_BYTES.set_function(lambda: sum(s.pending_bytes for s in list(self.sessions)))
        AMQP_UP.set_function(lambda: int(self.connected))

    # -- broker connection ---------------------------------------------------------
    def start(self) -> None:
        """Connect to RabbitMQ and start the heartbeat."""
        self._heartbeat.start(self.settings.gateway_heartbeat_s, now=False)
        self._connect()

    @property
    def connected(self) -> bool:
        """True while the broker connection is open."""
        return self.connection is not None and self.connection.is_open

    def _connect(self) -> None:
        if self.stopping:
            return
        params = self.brokers.parameters()
        endpoint: Any = endpoints.TCP4ClientEndpoint(reactor, params.host, params.port, timeout=10)
        if uses_tls(self.brokers.url):
            # pika's Twisted protocol ignores ssl_options: TLS is the endpoint's.
            endpoint = endpoints.wrapClientTLS(
                client_tls_options(self.settings, params.host), endpoint
            )
        protocol = TwistedProtocolConnection(params)
        d = endpoints.connectProtocol(endpoint, protocol)
        d.addCallback(lambda _p: protocol.ready)
        d.addCallbacks(lambda _: self._on_open(protocol), self._on_connect_failed)

    def _on_open(self, protocol: TwistedProtocolConnection) -> None:
        self.connection = protocol
        self._reconnect.succeeded()
        self.brokers.opened()
        log.info("connected to RabbitMQ", extra={"broker": self.brokers.address})
        protocol.closed.addBoth(self._on_closed)

    def _on_connect_failed(self, failure: Any) -> None:
        self._retry(f"connect failed: {failure.value!r}")

    def _on_closed(self, reason: Any) -> None:
        self.connection = None
        # Browsers reconnect by themselves and get fresh queues once we are back.
        for session in list(self.sessions):
            session.close()
        if not self.stopping:
            self._retry(f"connection closed: {reason!r}")

    def _retry(self, why: str) -> None:
        self.brokers.lost()
        if not self.stopping:
            self._reconnect.schedule(f"{why} (next: {self.brokers.address})")

    # -- sessions --------------------------------------------------------------------
    def claim_token(self, request: server.Request, claims: dict[str, Any]) -> bytes | None:
        """Mark the token's id used; an error body if it was used before (or no room)."""
        tenant = claims["tenant"] or ""
        if claims["issued"] < self.started:
            AUTH_FAILURES.labels("predates_start", tenant).inc()
            return _json_error(
                request,
                401,
                "token_reused",
                "this push token was issued before the gateway started and may have been "
                "used; ask the web app for a new one",
            )
        found = self.used_tokens.claim(claims["jti"], claims["expires"], time.time())
        if found is pushtoken.Claim.REUSED:
            AUTH_FAILURES.labels("reused", tenant).inc()
            log.info("push token used twice", extra={"user": claims["user"]})
            return _json_error(
                request,
                401,
                "token_reused",
                "this push token was used already; ask the web app for a new one",
            )
        if found is pushtoken.Claim.FULL:
            REFUSED.labels("token_memory_full", tenant).inc()
            log.warning("used push token memory full", extra={"entries": len(self.used_tokens)})
            return _json_error(
                request, 503, "token_memory_full", "too many new live streams, retry later"
            )
        return None

    def open_session(self, request: server.Request, user: str, tenant: str | None) -> bytes | int:
        """Start a stream for ``user``, or answer 429 (the user's or the tenant's cap) or
        503 (no broker, too many streams)."""
        label = tenant or ""
        settings = self.settings
        if not self.connected or self.stopping:
            REFUSED.labels("unavailable", label).inc()
            return _json_error(request, 503, "unavailable", "notifications are unavailable, retry")
        if self.per_user[user] >= settings.gateway_max_sessions_per_user:
            REFUSED.labels("user_session_limit", label).inc()
            return _json_error(
                request,
                429,
                "user_session_limit",
                f"this user already has {settings.gateway_max_sessions_per_user} live streams "
                "open; close one (a browser tab) first",
            )
        if (
            tenant is not None
            and self.per_tenant[tenant] >= settings.gateway_max_sessions_per_tenant
        ):
            REFUSED.labels("tenant_session_limit", label).inc()
            return _json_error(
                request,
                429,
                "tenant_session_limit",
                f"this tenant already has {settings.gateway_max_sessions_per_tenant} live "
                "streams open; retry later",
            )
        if len(self.sessions) >= settings.gateway_max_sessions:
            REFUSED.labels("full", label).inc()
            return _json_error(request, 503, "full", "too many live streams, retry later")
        session = Session(self, request, user, tenant)
        self.sessions.add(session)
        self.per_user[user] += 1
        if tenant is not None:
            self.per_tenant[tenant] += 1
        request.notifyFinish().addBoth(session.client_gone)
        session.open(self.connection)
        return server.NOT_DONE_YET

    def forget(self, session: Session) -> None:
        """The session ended (idempotent)."""
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        _decrement(self.per_user, session.user)
        if session.tenant is not None:
            _decrement(self.per_tenant, session.tenant)

    def _beat(self) -> None:
        for session in list(self.sessions):
            session.send(HEARTBEAT)
        self._close_revoked()

    @defer.inlineCallbacks
    def _close_revoked(self) -> Any:
        """Close the streams of users whose ``user.<id>`` is gone (:func:`notify.remove_user`).

        Their feed stopped when the exchange was deleted; closing the stream too makes the
        browser reconnect, and the web app then refuses a disabled user a new token.
        """
        if self._checking or not self.connected:
            return
        self._checking = True
        channel = None
        try:
            for user in sorted({s.user for s in self.sessions if s.streaming}):
                connection = self.connection
                if connection is None or not connection.is_open:
                    break
                if channel is None or not channel.is_open:
                    channel = yield connection.channel()
                try:
                    yield channel.exchange_declare(
                        exchange=notify.user_exchange(user), passive=True
                    )
                except ChannelClosed as exc:
                    channel = None
                    if exc.reply_code != NOT_FOUND:
                        raise
                    for session in [s for s in self.sessions if s.user == user]:
                        REVOKED.inc()
                        session.close()
                    log.info("streams of a removed user closed", extra={"user": user})
        except Exception as exc:
            log.warning("revocation check failed", extra={"why": repr(exc)})
        finally:
            self._checking = False
            if channel is not None and channel.is_open:
                channel.close()

    # -- process ---------------------------------------------------------------------
    def serve(self, metrics_port: int) -> None:
        """Run as a process: logging, metrics, the HTTP listener, the reactor."""
        observer = cast(ILogObserver, STDLibLogObserver(name="twisted"))
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        logging.getLogger("twisted").setLevel(logging.WARNING)  # no access log lines
        _raise_file_limit(self.settings.gateway_max_sessions)
        metrics.serve(metrics_port)
        endpoint = endpoints.TCP4ServerEndpoint(
            reactor, self.settings.gateway_port, interface=self.settings.gateway_host
        )
        endpoint.listen(site(self))
        _reactor.addSystemEventTrigger("before", "shutdown", self.shutdown)
        self.start()
        log.info(
            "listening",
            extra={"host": self.settings.gateway_host, "port": self.settings.gateway_port},
        )
        _reactor.run()
        log.info("stopped")

    # -- shutdown --------------------------------------------------------------------
    def shutdown(self) -> defer.Deferred[Any]:
        """Close every stream, delete their queues, close the connection (SIGTERM)."""
        self.stopping = True
        log.info("stopping", extra={"sessions": len(self.sessions)})
        if self._heartbeat.running:
            self._heartbeat.stop()
        for session in list(self.sessions):
            session.close()
        connection = self.connection
        if connection is None or not connection.is_open:
            return defer.succeed(None)
        # Queue deletes were sent on the session channels; the connection close is
        # queued behind them on the same socket.
        done = connection.close() or defer.succeed(None)
        return _with_timeout(done, 10.0)


class _Reactor(Protocol):
    """What the gateway asks of Twisted's reactor.

    Twisted types the reactor through zope interfaces, whose methods mypy reads
    without ``self`` unless the mypy-zope plugin runs; this says what they are.
    """

    def callLater(self, delay: float, callable: Callable[[], Any]) -> Any: ...

    def addSystemEventTrigger(
        self, phase: str, event_type: str, callable: Callable[[], Any]
    ) -> Any: ...

    def run(self) -> None: ...


_reactor = cast(_Reactor, reactor)


def _with_timeout(d: defer.Deferred[Any], seconds: float) -> defer.Deferred[Any]:
    d.addTimeout(seconds, reactor, onTimeoutCancel=lambda *_: None)
    return d


def _allowed_origins(settings: Settings) -> set[str]:
    configured = [o.strip().rstrip("/") for o in settings.gateway_allowed_origins.split(",")]
    origins = {o for o in configured if o}
    if not origins:
        origins = {f"http://{settings.web_host}:{settings.web_port}"}
        if settings.web_host in ("127.0.0.1", "::1", "localhost"):
            origins |= {
                f"http://localhost:{settings.web_port}",
                f"http://127.0.0.1:{settings.web_port}",
            }
    return origins


# -- HTTP resources ------------------------------------------------------------------
class Events(resource.Resource):
    """``/events?token=...``: the SSE stream."""

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: server.Request) -> bytes | int:
        """Authenticate, then hand the request to a new session."""
        self._cors(request)
        raw = (request.args.get(b"token") or [b""])[0]
        if not raw:
            AUTH_FAILURES.labels("missing", "").inc()
            return _json_error(request, 401, "unauthorized", "a push token is required")
        try:
            claims = pushtoken.verify(
                self.gateway.secret,
                raw.decode("ascii", "replace"),
                self.gateway.settings.push_token_ttl_s,
            )
            notify.user_exchange(claims["user"])  # a valid id, or ValueError
            if claims["tenant"] is not None:
                check_id("tenant", claims["tenant"])  # a metric label: a valid id only
        except pushtoken.InvalidToken as exc:
            AUTH_FAILURES.labels("expired" if exc.expired else "invalid", "").inc()
            return _json_error(request, 401, "unauthorized", str(exc))
        except ValueError:
            AUTH_FAILURES.labels("invalid", "").inc()
            return _json_error(request, 401, "unauthorized", "bad token payload")
        refused = self.gateway.claim_token(request, claims)
        if refused is not None:
            return refused
        return self.gateway.open_session(request, claims["user"], claims["tenant"])

    def render_OPTIONS(self, request: server.Request) -> bytes:
        """CORS pre-flight (EventSource sends none, but a fetch-based client may)."""
        self._cors(request)
        request.setHeader(b"access-control-allow-methods", b"GET")
        request.setResponseCode(204)
        return b""

    def _cors(self, request: server.Request) -> None:
        origin = (request.getHeader(b"origin") or b"").decode("latin-1").rstrip("/")
        if origin and (
            "*" in self.gateway.allowed_origins or origin in self.gateway.allowed_origins
        ):
            request.setHeader(b"access-control-allow-origin", origin.encode())
            request.setHeader(b"vary", b"Origin")


class Health(resource.Resource):
    """``/healthz``: the process answers; ``/readyz``: and the broker is connected."""

    isLeaf = True

    def __init__(self, gateway: Gateway, ready: bool) -> None:
        super().__init__()
        self.gateway = gateway
        self.ready = ready

    def render_GET(self, request: server.Request) -> bytes:
        """JSON status."""
        request.setHeader(b"content-type", b"application/json")
        body = {
            "status": "ok",
            "amqp": self.gateway.connected,
            "sessions": len(self.gateway.sessions),
        }
        if self.ready and not self.gateway.connected:
            body["status"] = "unavailable"
            request.setResponseCode(503)
        return orjson.dumps(body)


def site(gateway: Gateway) -> server.Site:
    """The gateway's HTTP site."""
    root = resource.Resource()
    # Resources implement IResource through zope's @implementer, which mypy cannot see.
    root.putChild(b"events", cast(IResource, Events(gateway)))
    root.putChild(b"healthz", cast(IResource, Health(gateway, ready=False)))
    root.putChild(b"readyz", cast(IResource, Health(gateway, ready=True)))
    return server.Site(root, timeout=60)


def _raise_file_limit(sessions: int) -> None:
    """One socket per session: lift the soft descriptor limit as far as the hard one allows."""
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    wanted = sessions + 256
    if soft != rlimit.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == rlimit.RLIM_INFINITY else min(wanted, hard)
        rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (new_soft, hard))
        if new_soft < wanted:
            log.warning("file descriptor limit below max sessions", extra={"limit": new_soft})


def client_tls_options(settings: Settings, host: str) -> Any:
    """Twisted's TLS options for the ``amqps://`` broker at ``host``, verified as pika's
    connections are.

    The chain must lead to ``FAIRWAY_AMQP_CA_FILE`` (the system's CAs when empty) and
    the certificate must name ``host``, the URL's (service_identity does the check).
    """
    pems = ca_certificates_pem(settings)
    if pems:
        trust = tls.trustRootFromCertificates([tls.Certificate.loadPEM(p) for p in pems])
    else:
        trust = tls.platformTrust()
    return tls.optionsForClientTLS(host, trustRoot=trust)


def run(settings: Settings) -> None:
    """``fairway gateway``: serve until SIGTERM, then close every stream."""
    for url in settings.amqp_urls:
        host = pika.URLParameters(url).host  # fail early on a malformed URL
        if uses_tls(url):
            client_tls_options(settings, host)  # and on an unusable CA file
    Gateway(settings).serve(settings.metrics_port)
