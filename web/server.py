"""``fairway web``: the app served by waitress, like every other process's ``run(settings)``.

RabbitMQ's auth requests (``/broker/*``) are served on ``FAIRWAY_BROKER_AUTH_PORT``
(8082) by their own thread pool: a flood of device logins cannot take the threads that
serve the pages and the API, nor the other way round. The web port still answers
``/broker/*`` (a broker still configured with it keeps working through an upgrade, where
the app is restarted before the broker is reconfigured), but logs a warning once a
minute and counts each call in ``fairway_web_broker_auth_on_web_port_total``: such a
broker shares the UI's threads until it is pointed at the auth port. 0 serves them on
the web port only.
Prometheus metrics are served on ``FAIRWAY_METRICS_PORT`` only, never on the public port.
SIGTERM stops it cleanly (exit 0) once the requests in progress are answered.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import waitress
from prometheus_client import Counter

from fairway.kernel import metrics
from fairway.kernel.settings import Settings
from web import create_app, http_errors

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0  # a misconfigured broker asks many times a second: log once a minute
BROKER_AUTH_ON_WEB_PORT = Counter(
    "fairway_web_broker_auth_on_web_port_total",
    "Broker auth calls answered on the web port while FAIRWAY_BROKER_AUTH_PORT is set",
)


def only_broker_auth(app: WsgiApp) -> WsgiApp:
    """``app`` restricted to ``/broker/``: anything else on the auth port answers 404."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/broker/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return serve


def warn_broker_auth_on_web_port(app: WsgiApp, auth_port: int) -> WsgiApp:
    """``app`` still serving ``/broker/``, with a warning: it belongs on ``auth_port``."""
    warned_at = [-WARN_EVERY_S]

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/broker/"):
            BROKER_AUTH_ON_WEB_PORT.inc()
            now = time.monotonic()
            if now - warned_at[0] >= WARN_EVERY_S:
                warned_at[0] = now
                log.warning(
                    "broker auth request on the web port: device logins belong on "
                    "FAIRWAY_BROKER_AUTH_PORT=%d (their own threads); point RabbitMQ's "
                    "auth_http.*_path there, or set FAIRWAY_BROKER_AUTH_PORT=0",
                    auth_port,
                )
        return app(environ, start_response)

    return serve


def run(settings: Settings, threads: int = 8) -> None:
    """Serve the pages, the JSON API and the broker's auth endpoints until stopped."""
    app: WsgiApp = create_app({"FAIRWAY_SETTINGS": settings})
    metrics.serve(settings.metrics_port)
    # waitress refuses a body of max_request_body_size bytes or more before the app sees
    # it, answered as JSON and counted (web.http_errors), like Flask's 413 for the same limit.
    limits = {"max_request_body_size": settings.web_max_body_bytes + 1}
    auth = None
    if settings.broker_auth_port:
        auth = waitress.create_server(
            only_broker_auth(app),
            host=settings.web_host,
            port=settings.broker_auth_port,
            threads=settings.broker_auth_threads,
            **limits,
        )
        http_errors.answer_errors_as_json(auth)
        threading.Thread(target=auth.run, name="broker-auth", daemon=True).start()
        app = warn_broker_auth_on_web_port(app, settings.broker_auth_port)
    server = waitress.create_server(
        app, host=settings.web_host, port=settings.web_port, threads=threads, **limits
    )
    http_errors.answer_errors_as_json(server)
    signal.signal(signal.SIGTERM, _stop)
    server.run()
    if auth is not None:
        # The auth loop runs in a daemon thread: let its threads finish the logins in
        # progress (waitress's own bound, 5 s) before the process exits.
        auth.task_dispatcher.shutdown()


def _stop(_signum: int, _frame: Any) -> None:
    # waitress's loop takes SystemExit as "stop": it lets its threads finish the requests
    # in progress (a few seconds at most) and returns, so SIGTERM is a clean exit (0).
    raise SystemExit(0)
