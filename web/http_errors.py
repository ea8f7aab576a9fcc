"""waitress's own refusals answered like the app's: ``{error, message}`` JSON, counted.

waitress refuses some requests before the app sees them: a body of
``max_request_body_size`` or more, declared or chunked (413), a request it cannot parse
(400), headers too large (431). Its answers were plain text, without the security
headers, and not counted in ``fairway_web_refused_total``: a client posting an
oversized body got no stable reason code, and nobody saw the refusals.
"""

from __future__ import annotations

from typing import Any

import orjson
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from web.metrics import REFUSED

CODES = {413: "too_large", 431: "headers_too_large"}  # other 4xx: bad_request


def body_limit(max_request_body_size: int) -> int:
    """The largest body waitress reads with this setting (it refuses that size and more)."""
    return max_request_body_size - 1


class JsonErrorTask(ErrorTask):
    """waitress's error answer as ``{"error": code, "message": sentence}``, counted with
    the tenant empty (nobody is identified before the request is read)."""

    def execute(self) -> None:
        error = self.request.error
        status = int(error.code)
        code = CODES.get(status) or ("bad_request" if 400 <= status < 500 else "server_error")
        if code == "too_large":
            limit = body_limit(self.channel.server.adj.max_request_body_size)
            message = f"the request body is larger than {limit} bytes"
        else:
            message = str(error.body)
        REFUSED.labels(code, "").inc()
        body = orjson.dumps({"error": code, "message": message})
        self.status = f"{status} {error.reason}"
        self.response_headers.extend(
            [
                ("Content-Type", "application/json"),
                ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    """waitress's channel with :class:`JsonErrorTask` for the requests it refuses."""

    error_task_class = JsonErrorTask


def answer_errors_as_json(server: Any) -> None:
    """Make a server from ``waitress.create_server`` answer its own refusals as JSON (each
    listening socket's server, when it listens on several)."""
    servers = [server, *getattr(server, "map", {}).values()]
    for each in servers:
        if hasattr(each, "channel_class"):
            each.channel_class = JsonErrorChannel
