"""JSON errors for the API: a stable code, a clear message, the right status.

Every error answer is counted in ``fairway_web_refused_total{reason,tenant}``.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from web.metrics import count_refusal

TOO_LARGE = "too_large"


class ApiError(Exception):
    """Raise to answer ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad_input(exc: Exception) -> ApiError:
    """A 400 for a ``ValueError`` from the domain, keeping its reason code if it has one
    (``reserved_id``), else ``bad_parameter``."""
    reason = getattr(exc, "reason", None)
    return ApiError(400, reason if isinstance(reason, str) else "bad_parameter", str(exc))


def error_response(status: int, code: str, message: str) -> Response:
    """A JSON error response (counted as a refusal)."""
    count_refusal(code)
    response = jsonify(error=code, message=message)
    response.status_code = status
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def init_app(app: Flask) -> None:
    """Answer ApiError, CSRF failures and HTTP errors under ``/api/`` as JSON."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError) -> Response | tuple[str, int]:
        if _wants_json():
            return error_response(400, "csrf_failed", exc.description)
        count_refusal("csrf_failed")
        return exc.description, 400

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        # Always JSON: the body was not read, whatever the client wanted.
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return error_response(413, TOO_LARGE, f"the request body is larger than {limit} bytes")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        code = (exc.name or "error").lower().replace(" ", "_")
        if not _wants_json():
            count_refusal(code)
            return exc
        return error_response(exc.code or 500, code, exc.description or exc.name)
