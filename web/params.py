"""Query-string parsing for the API: clear 400s instead of stack traces."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import current_app, request

from web.errors import ApiError


def time_param(name: str) -> datetime | None:
    """An ISO 8601 time or Unix seconds from the query string, as aware UTC."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    return parse_time(name, raw)


def parse_time(name: str, raw: str) -> datetime:
    """ISO 8601 or Unix seconds as aware UTC; 400 naming ``name`` otherwise."""
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (OverflowError, OSError):
        raise ApiError(400, "bad_parameter", f"{name} {raw!r} is out of range") from None
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "bad_parameter", f"{name} must be ISO 8601 or Unix seconds, not {raw!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def limit_param(default: int = 100) -> int:
    """``limit`` in 1..``FAIRWAY_API_PAGE_MAX``."""
    most = current_app.config["FAIRWAY_SETTINGS"].api_page_max
    raw = request.args.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise ApiError(400, "bad_parameter", f"limit must be an integer from 1 to {most}")
    return limit
