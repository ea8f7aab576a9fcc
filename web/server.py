"""``fairway web``: the app served by waitress, like every other process's ``run(settings)``.

With ``FAIRWAY_BROKER_AUTH_PORT`` set, RabbitMQ's auth requests (``/broker/*``) are
served on that port by their own thread pool: a flood of device logins then cannot
take the threads that serve the pages and the API, nor the other way round.
Prometheus metrics are served on ``FAIRWAY_METRICS_PORT`` only, never on the public port.
SIGTERM stops it cleanly (exit 0) once the requests in progress are answered.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

import waitress

from fairway.kernel import metrics
from fairway.kernel.settings import Settings
from web import create_app, http_errors

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def only_broker_auth(app: WsgiApp) -> WsgiApp:
    """``app`` restricted to ``/broker/``: anything else on the auth port answers 404."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/broker/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return serve


def run(settings: Settings, threads: int = 8) -> None:
    """Serve the pages, the JSON API and the broker's auth endpoints until stopped."""
    app = create_app({"FAIRWAY_SETTINGS": settings})
    metrics.serve(settings.metrics_port)
    # waitress refuses a body of max_request_body_size bytes or more before the app sees
    # it, answered as JSON and counted (web.http_errors), like Flask's 413 for the same limit.
    limits = {"max_request_body_size": settings.web_max_body_bytes + 1}
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
    server = waitress.create_server(
        app, host=settings.web_host, port=settings.web_port, threads=threads, **limits
    )
    http_errors.answer_errors_as_json(server)
    signal.signal(signal.SIGTERM, _stop)
    server.run()


def _stop(_signum: int, _frame: Any) -> None:
    # waitress's loop takes SystemExit as "stop": it lets its threads finish the requests
    # in progress (a few seconds at most) and returns, so SIGTERM is a clean exit (0).
    raise SystemExit(0)
